"""The chaos soak's checks (bench/chaos_checks.py) on made-up evidence: each can fail."""

from __future__ import annotations

import hashlib
import json

from bench.chaos_checks import digest, fence_violations, late_unrefused, leader_terms, overlapping_terms, served
from bench.chaos_load import Entry


def test_a_node_running_a_command_with_an_older_token_than_before_is_a_fence_violation():
    ops = {("n1", 1.0, 5, "load", "a"), ("n1", 2.0, 7, "unload", "a"), ("n1", 3.0, 6, "load", "b"),
           ("n2", 1.0, 9, "load", "c")}
    assert fence_violations(ops) == ["n1: load b at 3.0 with token 6 after 7"]
    assert fence_violations({("n1", 1.0, 5, "load", "a"), ("n1", 2.0, 5, "load", "b")}) == []


def test_a_former_leaders_command_after_a_newer_ones_counts_unless_fencing_refused_it():
    late, two_seconds, gap = overlapping_terms({1: [10.0, 14.5], 2: [14.2, 20.0]})
    assert late == {1: 1} and two_seconds == 1 and round(gap, 1) == -0.3
    assert late_unrefused(late, {}) == 1 and late_unrefused(late, {1: 1}) == 0
    assert overlapping_terms({1: [10.0, 11.0], 2: [13.5]})[:2] == ({}, 0)


def test_leader_terms_read_plan_lines_by_their_token_or_the_lease_they_follow(tmp_path):
    log = tmp_path / "broker.log"
    log.write_text("2026-12-01 10:00:00,000 INFO [scheduler] mm.leader: LEASE acquired by b@n1:1 with token 7\n"
                   "2026-12-01 10:00:01,500 INFO [scheduler] mm.leader: PLAN bind w1@n1 to a (node=n1)\n"
                   "2026-12-01 10:00:02,000 INFO [scheduler] mm.leader: PLAN load a on n1 (token 7) (node=n1)\n"
                   "2026-12-01 10:00:03,000 WARNING [scheduler] mm.leader: LEASE lost by b@n1:1: renewal failed; "
                   "standing down\n"
                   "2026-12-01 10:00:04,000 INFO [scheduler] mm.leader: PLAN bind w2@n1 to a (node=n1)\n")
    terms = leader_terms([log])
    assert list(terms) == [7] and len(terms[7]) == 2 and terms[7][1] - terms[7][0] == 0.5


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
