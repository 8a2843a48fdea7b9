"""mm: a Celery + Redis scheduler for LLM inference jobs on GPU hosts running Ollama.

    import mm
    job = mm.submit("gemma3:270m", "Why is the sky blue?", priority="high")
    print(job.get(timeout=60)["response"])
"""

from typing import Any

__all__ = ["submit", "generate", "Job", "JobFailed", "JobCancelled", "JobExpired", "UnknownJob",
           "ValidationError", "record_metric", "metric_stats"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import mm` (e.g. by the embedded runtime) does not pull in Celery.
    if name in ("submit", "generate", "Job"):
        from mm import client

        return getattr(client, name)
    if name in ("record_metric", "metric_stats"):
        from mm import quality

        return getattr(quality, name)
    if name in ("JobFailed", "JobCancelled", "JobExpired", "UnknownJob", "ValidationError"):
        from mm import errors

        return getattr(errors, name)
    raise AttributeError(name)
