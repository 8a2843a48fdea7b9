"""Celery configuration for mm, read from mm's typed settings (mm/settings.py) only."""

from mm import keys
from mm.settings import get as _settings

_s = _settings()

broker_url = _s.redis_url
result_backend = _s.redis_url

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Long GPU jobs: acknowledge after the job, redeliver if the worker dies, take one job at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
task_time_limit = _s.job_time_limit_s
worker_cancel_long_running_tasks_on_connection_loss = False
broker_connection_retry_on_startup = True

# kombu restores unacked messages older than the visibility timeout: it must exceed the longest job,
# and kombu reads it from each of these places.
_transport = {
    "visibility_timeout": _s.visibility_timeout_s,
    "priority_steps": keys.PRIORITY_STEPS,
    "queue_order_strategy": "priority",
    "sep": keys.PRIORITY_SEP,
}
broker_transport_options = _transport
result_backend_transport_options = {"visibility_timeout": _s.visibility_timeout_s}
visibility_timeout = _s.visibility_timeout_s

result_extended = True
result_expires = _s.result_expires_s

task_default_queue = "mm.default"
task_create_missing_queues = True
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False

# Beat's periodic jobs (aligned to the wall clock, sent to mm.beat) and its slot-stamping scheduler.
from beat.schedule import beat_schedule, beat_scheduler  # noqa: E402,F401
