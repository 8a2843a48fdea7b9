"""mm's Celery configuration, read from mm's typed settings (mm/settings.py) only.

The app loads it by its full name (``mm.celeryconfig``), so a project's own ``celeryconfig``
module never configures mm, and mm never configures that project.
"""

from mm import keys
from mm import redis_url as _redis_url
from mm.settings import get as _settings

_s = _settings()

# redis://, rediss:// (TLS) or sentinel:// (kombu's sentinel transport, Celery's sentinel backend).
_redis = _redis_url.parse(_s.redis_url)
broker_url = _redis.url
result_backend = _redis.url
if _redis.tls:  # Celery wants the TLS options as settings, not only in the URL
    broker_use_ssl = _redis.ssl_options()
    redis_backend_use_ssl = _redis.ssl_options()

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Long GPU jobs: acknowledge after the job, redeliver if the worker dies, take one job at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = False  # mm's job record says "running"; one Redis write less per job
task_time_limit = _s.job_time_limit_s
worker_cancel_long_running_tasks_on_connection_loss = False
broker_connection_retry_on_startup = True

# kombu restores unacked messages older than the visibility timeout: it must exceed the longest job,
# and kombu reads it from each of these places.
_transport = {
    "visibility_timeout": _s.visibility_timeout_s,
    "priority_steps": keys.PRIORITY_STEPS,  # kombu's defaults: any stock Celery client interoperates
    "sep": keys.PRIORITY_SEP,
    "queue_order_strategy": "priority",
    "polling_interval": 0.1,  # a worker bound to a queue at run time picks it up within 0.1 s
}
broker_transport_options = _transport | _redis.transport_options()  # + master_name with sentinel
result_backend_transport_options = {"visibility_timeout": _s.visibility_timeout_s} | _redis.transport_options()
visibility_timeout = _s.visibility_timeout_s

# A finished job whose result meets Redis restarting (or a Sentinel failover) stores it once Redis is
# back, instead of failing with ConnectionError after its work is done (Celery backs off up to 10 s).
result_backend_always_retry = True
result_backend_max_retries = 20
result_extended = False  # the job record holds what a reader needs; results stay small
result_expires = _s.result_expires_s

task_default_queue = keys.DEFAULT_QUEUE
# mm.infer to its model's queue at its priority, beat's tasks to mm.beat: no queue= needed.
task_routes = ("mm.routing.route",)
task_create_missing_queues = True
# Task events cost several Redis publishes per job; Flower switches them on while it runs
# (its --enable-events default), so they flow only when someone watches.
worker_send_task_events = False
worker_hijack_root_logger = False

# Beat's scheduler: in memory (no celerybeat-schedule file, so two beats in one directory do not
# collide), it runs mm's periodic jobs (mm.beat.schedule, aligned to the wall clock, sent to
# mm.beat) and stamps each message with its schedule slot.
beat_scheduler = "mm.beat.scheduler:SlotScheduler"
