"""The bootstep that gives a Celery worker its mm role.

A worker consuming a node queue (``-Q mm.node.<node>``) is a gpu-broker: it runs the node agent and
a leader candidate, and consumes the default queues, where plain Celery clients' jobs may land.
Any other worker is a model-worker: it publishes its state and waits to be bound.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import redis
from celery import bootsteps, signals
from celery.exceptions import ImproperlyConfigured
from celery.worker.consumer import Consumer

from mm import keys, log_format, logs, store, worker_setup
from mm.memory import monitor_for
from mm.settings import Settings
from mm.settings import get as get_settings
from mm.workers import broker_role, worker_state

log = logging.getLogger("mm.worker")


def _is_broker(consumer: Consumer) -> bool:
    return any(name.startswith(keys.node_queue("")) for name in consumer.app.amqp.queues.consume_from)


def _check_setup(c: Consumer, r: redis.Redis, settings: Settings) -> None:
    """Stop the process, saying why and how to start it, if how it was started is wrong for its role."""
    started = worker_setup.Started(
        pool=type(c.pool).__module__.rpartition(".")[2],
        concurrency=c.controller.concurrency,  # type: ignore[attr-defined]  # the WorkController; celery-types omit it
        queues=frozenset(c.app.amqp.queues.consume_from),
    )
    found = worker_setup.problems(started, settings)
    if started.is_broker and not found:
        found = worker_setup.node_taken(r, settings, socket.gethostname())
    worker_setup.record(r, c.hostname or "", found)
    if found:
        for problem in found:
            log.critical("%s", problem)
        raise ImproperlyConfigured(" | ".join(found))


@signals.worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    """A warm shutdown began: a leader hands its lease over now, a model-worker takes no new binding.

    Celery sends this from its signal handler, so the Redis writes run on a thread of their own."""
    def leave() -> None:
        try:
            if broker_role.leader is not None:
                broker_role.leader.stop()
            if worker_state.current is not None:
                worker_state.current.drain()
        except redis.RedisError as exc:
            log.warning("could not announce the shutdown: %s", exc)

    threading.Thread(target=leave, name="mm-shutdown", daemon=True).start()


class MMRole(bootsteps.StartStopStep):
    """Starts the node agent and leader (gpu-broker) or the worker-state publisher (model-worker)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Consumer, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.started = False

    def start(self, c: Consumer) -> None:
        # Called again after a broker connection loss; the role is set up once per process.
        if worker_state.current is not None:
            worker_state.current.consumer = c
        if self.started:
            return
        self.started = True
        logs.quiet_http_polls()
        settings = get_settings()
        r = store.connect()
        _check_setup(c, r, settings)
        if _is_broker(c):
            from mm.workers.leader import Leader
            from mm.workers.node_agent import NodeAgent
            agent = NodeAgent(settings, r, monitor_for(settings.memory_budget, settings.use_nvml, settings.gpus))
            try:
                agent.sync_registry(force=True)
            except Exception as exc:  # runtime not up yet: the heartbeat keeps trying
                log.warning("registry sync from %s failed: %s", settings.runtime_url, exc)
            agent.start()
            broker_role.agent = agent
            leader = Leader(c.app, settings, r, owner=f"{c.hostname}:{os.getpid()}")
            leader.start()
            broker_role.leader = leader
            for queue in keys.INTAKE_QUEUES:  # jobs plain Celery clients sent without a queue
                if queue not in c.app.amqp.queues.consume_from:
                    c.add_task_queue(queue)
            log_format.set_process(settings, "node", node=True)  # Celery's own lines in this process
            log.info("gpu-broker for node %s started (runtime %s)", settings.node, settings.runtime_url)
        else:
            concurrency = c.controller.concurrency  # type: ignore[attr-defined]  # the WorkController; celery-types omit it
            state = worker_state.WorkerState(
                r, c.hostname, settings.node, concurrency, settings.heartbeat_s, settings.state_ttl_s
            )
            state.consumer = c
            state.start()
            worker_state.current = state
            log.info("model-worker %s on node %s started with %d slots", c.hostname, settings.node, state.slots)

    def shutdown(self, c: Consumer) -> None:
        if broker_role.leader is not None:
            broker_role.leader.stop()
        if broker_role.agent is not None:
            broker_role.agent.stop()
        if worker_state.current is not None:
            worker_state.current.stop()
