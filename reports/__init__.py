"""Results -> tables and plots. Reads only complete runs (those with summary.json)."""
