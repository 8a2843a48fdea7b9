"""Exceptions mm raises to its users."""


class MMError(Exception):
    """Base of every mm error."""


class ValidationError(MMError, ValueError):
    """A request was refused before anything was enqueued; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownModel(ValidationError):
    def __init__(self, model: str):
        super().__init__("model", f"unknown model {model!r}: no runtime lists it in /api/tags")
        self.model = model


class JobFailed(MMError):
    """A job ended FAILED; the message is the reason.

    ``status`` is the HTTP status the runtime answered with (400 for a request it refused), or
    None when the failure was not the runtime's answer (connection errors, a lost worker).
    """

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message)  # one argument, so Celery can rebuild it from its stored result
        self.status = status


class JobCancelled(JobFailed):
    """A job ended cancelled (``job.cancel()``, ``DELETE /api/job/<id>``, its batch stopped, its
    gateway client gone); the message, ``cancelled: <why>``, is the reason. The gateway answers
    a request whose job was cancelled with ``status``, 409."""

    def __init__(self, message: str = "cancelled", status: int | None = 409):
        super().__init__(message, status)


class JobExpired(JobFailed):
    """A job ended expired: it was not started within its ``deadline_s`` and never ran; the message,
    ``expired: <why>``, says how long it waited. The gateway answers a request whose job expired
    with ``status``, 504."""

    def __init__(self, message: str = "expired", status: int | None = 504):
        super().__init__(message, status)


class UnknownJob(MMError, LookupError):
    """No job has this id (never submitted, or its record expired after ``MM_RESULT_EXPIRES_S``)."""


class JobLost(JobFailed):
    """A submitted job no longer exists in Redis (data lost); it will never run."""


class RedisFull(MMError):
    """Redis is near its ``maxmemory``: new jobs are refused until it drains (nothing was enqueued)."""


class StaleToken(MMError):
    """A broker command carried a fencing token older than the newest one the node has seen."""
