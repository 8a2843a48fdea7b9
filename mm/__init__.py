"""mm: a Celery + Redis scheduler for LLM inference jobs on GPU hosts running Ollama."""
