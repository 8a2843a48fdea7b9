"""The chaos soak's checks (bench/chaos_checks.py) on made-up evidence: each can fail."""

from __future__ import annotations

import hashlib
import json

from bench.chaos_checks import (
    digest,
    fence_accepts_by_token,
    fence_violations,
    late_obeyed,
    leader_terms,
    lease_starts,
    overlapping_terms,
    served,
)
from bench.chaos_load import Entry


def test_a_node_running_a_command_with_an_older_token_than_before_is_a_fence_violation():
    ops = {("n1", 1.0, 5, "load", "a"), ("n1", 2.0, 7, "unload", "a"), ("n1", 3.0, 6, "load", "b"),
           ("n2", 1.0, 9, "load", "c")}
    assert fence_violations(ops) == ["n1: load b at 3.0 with token 6 after 7"]
    assert fence_violations({("n1", 1.0, 5, "load", "a"), ("n1", 2.0, 5, "load", "b")}) == []


def test_a_former_leaders_command_after_a_newer_ones_is_late_and_broken_fencing_if_accepted():
    terms = {1: [10.0, 14.5], 2: [14.2, 20.0]}
    late, two_seconds, gap = overlapping_terms(terms)
    assert late == {1: 1} and two_seconds == 1 and round(gap, 1) == -0.3
    assert overlapping_terms({1: [10.0, 11.0], 2: [13.5]})[:2] == ({}, 0)
    # Accepted before the newer leader's first command: fine; after it: fencing broken.
    assert late_obeyed(terms, {1: [10.1, 14.1], 2: [14.3]}) == {}
    assert late_obeyed(terms, {1: [10.1, 14.6], 2: [14.3]}) == {1: 1}
    # A newer term begins when its lease is acquired, before its first command.
    assert overlapping_terms({1: [10.0, 13.9], 2: [14.2]}, {2: 13.8})[0] == {1: 1}
    assert late_obeyed({1: [10.0, 13.9], 2: [14.2]}, {1: [13.95]}, {2: 13.8}) == {1: 1}
    assert late_obeyed({1: [10.0, 13.9], 2: [14.2]}, {1: [13.75]}, {2: 13.8}) == {}


def test_fenced_accepts_are_read_from_node_and_worker_logs_by_token(tmp_path):
    (tmp_path / "w1.log").write_text(
        "2026-12-01 10:00:01,500 INFO [worker] mm.worker: FENCE accepted bind to a on w1@n1 with token 7\n"
        "2026-12-01 10:00:02,000 WARNING [worker] mm.worker: FENCE refused bind to b on w1@n1 with token 6: "
        "token 7 already seen\n")
    (tmp_path / "broker.log").write_text(
        "2026-12-01 10:00:02,250 INFO [node] mm.node: FENCE accepted load a with token 7 (node=n1)\n")
    accepted = fence_accepts_by_token(sorted(tmp_path.glob("*.log")))
    assert list(accepted) == [7] and [round(t - min(accepted[7]), 2) for t in sorted(accepted[7])] == [0.0, 0.75]


def test_leader_terms_read_plan_lines_by_their_token_or_the_lease_they_follow(tmp_path):
    log = tmp_path / "broker.log"
    log.write_text("2026-12-01 10:00:00,000 INFO [scheduler] mm.leader: LEASE acquired by b@n1:1 with token 7\n"
                   "2026-12-01 10:00:01,500 INFO [scheduler] mm.leader: PLAN bind w1@n1 to a (node=n1)\n"
                   "2026-12-01 10:00:02,000 INFO [scheduler] mm.leader: PLAN load a on n1 (token 7) (node=n1)\n"
                   "2026-12-01 10:00:03,000 WARNING [scheduler] mm.leader: LEASE lost by b@n1:1: renewal failed; "
                   "standing down\n"
                   "2026-12-01 10:00:04,000 INFO [scheduler] mm.leader: PLAN bind w2@n1 to a (node=n1)\n")
    terms = leader_terms([log])
    # The bind after standing down is the former term's, a late command for fencing to refuse.
    assert list(terms) == [7] and [t - terms[7][0] for t in terms[7]] == [0.0, 0.5, 2.5]
    assert list(lease_starts([log])) == [7] and terms[7][0] - lease_starts([log])[7] == 1.5


def test_a_jobs_runtime_calls_are_found_by_the_digest_of_the_body_its_worker_sends(tmp_path):
    entry = Entry("k", "submit", "m:1b", "generate", "a unique prompt", {"num_predict": 4}, 0.0)
    body = {"model": "m:1b", "keep_alive": -1, "stream": True, "options": {"num_predict": 4, "num_ctx": 2048},
            "prompt": "a unique prompt"}
    wire = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert digest(entry, 2048) == hashlib.sha1(wire).hexdigest()[:12]
    log = tmp_path / "runtime-1.log"
    log.write_text(f"2026-12-01 10:00:01,250 INFO [runtime] mm.runtime: POST /api/generate 200 250.0ms "
                   f"model=m:1b request={digest(entry, 2048)} load=0.000s\n"
                   "2026-12-01 10:00:02,000 INFO [runtime] mm.runtime: POST /api/generate 200 1.0ms "
                   "model=m:1b request=0123456789ab client=gone\n")
    calls = served([log])
    assert list(calls) == [digest(entry, 2048)]
    (start, end), = calls[digest(entry, 2048)]
    assert round(end - start, 3) == 0.25
