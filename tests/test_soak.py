"""The soak (bench/soak.py) at CI size: jobs through a pool of three fake ComfyUI servers under random faults.

The script is run as the operator runs it, as a subprocess, on the test run's
database server; it starts its own fakes (different checkpoints, one with a
custom node class), s3rver, API and listeners, and kills and restarts the
listener, restarts and drains servers while jobs run. Its exit code is the
verdict on the invariants; its summary, faults and checks lines are checked here
too, so a soak that injected no fault, skipped the restart or the drain, pushed
fewer jobs or had a prompt refused by a server cannot pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.stack import PROJECT_ROOT

JOBS = int(os.environ.get("SOAK_JOBS", "500"))
SEED = int(os.environ.get("SOAK_SEED", "20261130"))
ZERO = ("lost", "stuck", "duplicate_outputs", "duplicate_usage", "image_mismatches")
ZERO_CHECKS = ("over_submitted", "drain_violations", "refused", "ghost_prompts", "unexplained_failures")


def pairs(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split())


def test_soak_keeps_every_invariant(database_url):
    server = database_url.with_database("mysql")
    url = f"mysql://{server.user}:{server.password}@{server.host}:{server.port}/{server.database}"
    out = subprocess.run([sys.executable, "bench/soak.py", "--jobs", str(JOBS), "--seed", str(SEED)],
                         env={**os.environ, "TEST_DATABASE_URL": url}, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=900)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    summary = re.search(r"^jobs=(\d+) succeeded=(\d+) failed=(\d+) cancelled=(\d+) (.*)$", report, re.M)
    assert summary, report
    jobs, succeeded, failed, cancelled = map(int, summary.groups()[:4])
    assert jobs == JOBS == succeeded + failed + cancelled, report
    counts = pairs(summary.group(5))
    assert {name: counts[name] for name in ZERO} == {name: "0" for name in ZERO}, report
    faults = pairs(re.search(r"^faults: (.*?) duration", report, re.M).group(1))
    assert int(faults["total"]) >= JOBS // 50, report  # the faults really happened
    # At least one listener kill -9, one ComfyUI restart and one drain (then resume) of a server.
    assert int(faults["kill_listener"]) >= 1 and int(faults["restart"]) >= 1 and int(faults["drain"]) >= 1, report
    assert re.search(r"^drain: \w+ drained ", report, re.M), report  # the drain was checked, not only asked for
    checks = pairs(re.search(r"^checks: (.*)$", report, re.M).group(1))
    # No prompt was refused by a fake server (a job sent where it cannot run), none sent twice without cause,
    # none to a drained server.
    assert {name: checks[name] for name in ZERO_CHECKS} == {name: "0" for name in ZERO_CHECKS}, report
    print(report)
