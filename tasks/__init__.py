"""Benchmark tasks; each package exposes `TASK`, registered by the `spam_bench.tasks` entry point."""
