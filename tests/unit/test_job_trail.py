"""The path of one job, from its record and the event stream (pure code)."""

from __future__ import annotations

import json

from mm.job_trail import trail

RECORD = {"id": "j1", "model": "a:1b", "kind": "chat", "priority": "low", "submitted_at": "100.0",
          "started_at": "103.5", "completed_at": "104.0", "status": "complete", "node": "n1", "worker": "w1@n1",
          "metadata": json.dumps({"via": "gateway", "endpoint": "/v1/chat/completions"})}


def test_steps_come_in_time_order_with_each_component():
    events = [{"kind": "load", "at": 103.0, "model": "a:1b", "node": "n1", "seconds": 2.5},
              {"kind": "leader", "at": 101.0, "owner": "b@n2", "token": 7}]

    steps = trail(RECORD, events)

    assert [(s.at, s.component) for s in steps] == [(100.0, "queue"), (101.0, "scheduler"), (103.0, "node"),
                                                    (103.5, "worker"), (104.0, "worker")]
    assert "through the gateway (/v1/chat/completions)" in steps[0].text
    assert "after 3.500s in the queue" in steps[3].text and steps[4].text == "complete"


def test_events_of_other_models_workers_and_nodes_are_left_out():
    events = [{"kind": "load", "at": 101.0, "model": "b:1b", "node": "n1"},
              {"kind": "worker_lost", "at": 101.5, "worker": "w9@n2", "jobs": 1},
              {"kind": "node_lost", "at": 102.0, "nodes": ["n2"]},
              {"kind": "node_lost", "at": 102.5, "nodes": ["n1"]}]

    steps = trail(RECORD, events)

    assert [s.at for s in steps if s.component == "scheduler"] == [102.5]
    assert not any("b:1b" in s.text for s in steps)


def test_a_failed_redelivered_batch_job_says_so():
    record = RECORD | {"status": "failed", "error": "runtime said no",
                       "metadata": json.dumps({"batch_id": "batch_x", "custom_id": "c7"})}

    steps = trail(record, [], deliveries=2)

    assert "for batch batch_x (custom_id c7)" in steps[0].text
    assert "(delivery 2)" in steps[1].text and steps[2].text == "failed: runtime said no"


def test_a_cancelled_job_says_so_once():
    record = RECORD | {"status": "cancelled", "error": "cancelled: by the client"}

    assert trail(record, [])[-1].text == "cancelled: by the client"
