"""``mm runtime``: an embedded server that speaks Ollama's HTTP API.

Modules: ``catalog`` (model specs and the models file), ``durations`` (keep_alive and time
formats), ``errors`` (Ollama's error texts), ``requests`` (body validation), ``scheduler``
(memory budget, residency, expiry, evict modes), ``slots`` (per-model parallelism), ``engines``
(sim and llama), ``handlers``/``api``/``api_models`` (tornado handlers) and ``server``.
"""
