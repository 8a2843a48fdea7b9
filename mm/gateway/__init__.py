"""``mm gateway``: HTTP for mm's REST endpoints, an Ollama-compatible proxy, /metrics, a status page.

Every request is served from Redis and through the client API (:func:`mm.submit`); the gateway
holds no state of its own besides the counters behind ``/metrics``.
"""
