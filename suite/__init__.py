"""spam-bench core: run specs, registries, configuration, the results store, telemetry and the CLI.

This package never imports a task or an optimizer by name; they reach it through entry points
(`spam_bench.tasks`, `spam_bench.optimizers`), so plug-ins need no change here.
"""
