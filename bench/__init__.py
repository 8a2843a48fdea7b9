"""Benchmarks: mm against a bare Celery round trip, Ollama's own scheduler (default and tuned) and lower bounds.

Run them as modules from the repository root (``python -m bench.overhead``); see BENCHMARKS.md.
"""
