"""Optimizers benchmarked by spam-bench; each module exposes `SPEC`, registered by entry point."""
