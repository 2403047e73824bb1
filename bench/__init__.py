"""Benchmarks (not shipped): a regular package so ``from bench.harness import ...`` names one module, for the
scripts run as ``python bench/x.py`` and for mypy alike."""
