"""bench.e2e at a tiny size: every workload, every system, one round, to the last contact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.processes import ROOT, clean_env

SYSTEMS = ("syncworker", "naive", "naive_simple")
PER_SYSTEM = (
    "contacts_per_s",
    "complete_rounds",
    "rounds",
    "opted_out",
    "contacts",
    "seconds",
    "hubspot_requests",
    "hubspot_429s",
    "contacts_per_request",
    "posts_non_2xx",
)


@pytest.mark.slow
def test_every_system_opts_out_every_contact_in_every_workload() -> None:
    args = [
        sys.executable, "-m", "bench.e2e", "--rounds", "1", "--single", "10",
        "--batch-events", "20", "--batch-size", "10", "--cap", "60", "--cap-syncworker", "60",
        "--cap-limited", "60", "--concurrency", "4", "--batch-concurrency", "2",
    ]  # fmt: skip
    run = subprocess.run(
        args, cwd=ROOT, env=clean_env({}), capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)

    for system in SYSTEMS:
        accepted = result["intake_accepted_single_posts_per_s"][system]
        assert accepted["non_2xx"] == [0]
        assert accepted["min"] > 0
    workloads = result["workloads"]
    for name, contacts in (("a", 20), ("b", 20), ("c", 10), ("d", 10), ("e", 10)):
        entry = workloads[name]
        for system in SYSTEMS:
            figures = entry[system]
            assert set(PER_SYSTEM) <= set(figures), (name, system)
            assert figures["contacts"] == contacts
            assert figures["opted_out"] == [contacts], (name, system)
            assert figures["complete_rounds"] == 1, (name, system)
            assert figures["posts_non_2xx"] == [0], (name, system)
            assert figures["contacts_per_s"]["min"] > 0
            assert figures["hubspot_requests"][0] >= 1
        # the naive bridge makes one HubSpot call per contact
        assert entry["naive"]["hubspot_requests"] == [contacts]
        assert entry["naive_simple"]["hubspot_requests"] == [contacts]
        for ratio in ("ratio_syncworker_to_naive", "ratio_syncworker_to_naive_simple"):
            assert entry[ratio]["median"] > 0
    for name in ("c", "d", "e"):
        assert workloads[name]["syncworker_ratio_to_intake_accepted"]["median"] > 0
    for name in ("b", "e"):
        assert workloads[name]["syncworker_fraction_of_rate_x_batch"]["median"] > 0
    assert set(workloads["scaling_2_workers_over_1"]) == set(SYSTEMS)
    assert len(result["targets"]) == 7
    assert {t["target"] for t in result["targets"]} >= {"2 workers / 1 worker (syncworker)"}
