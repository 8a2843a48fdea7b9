"""The Celery app: a leaf module. Clients send tasks by name and never import worker code."""

from celery import Celery

from mm import broker_transport, log_format, routing

broker_transport.install()  # a worker that loses its broker reconnects instead of exiting
log_format.install_celery_hooks()  # MM_LOG_FORMAT for workers, gpu-brokers and beat
app = Celery("mm", include=["mm.workers.node_tasks", "mm.workers.model_tasks", "mm.beat.tasks"])
app.config_from_object("mm.celeryconfig")
# A string, so clients that import the app never import worker code.
app.steps["consumer"].add("mm.workers.bootsteps:MMRole")
# The kwargsrepr header would repeat the whole request (prompt included) in every queued message.
app.amqp.argsrepr_maxsize = app.amqp.kwargsrepr_maxsize = 100

# Task names are the contract between clients and workers.
INFER_TASK = routing.INFER_TASK
LOAD_TASK = "mm.node.load"
UNLOAD_TASK = "mm.node.unload"
PULL_TASK = "mm.node.pull"
DELETE_TASK = "mm.node.delete"
