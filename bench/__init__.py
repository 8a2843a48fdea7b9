"""Benchmarks: mm against a bare Celery round trip, an Ollama-like scheduler and lower bounds.

Run them as modules from the repository root (``python -m bench.overhead``); see BENCHMARKS.md.
"""
