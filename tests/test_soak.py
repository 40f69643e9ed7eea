"""The soak (bench/soak.py) at CI size: jobs through two fake ComfyUI servers under random faults.

The script is run as the operator runs it, as a subprocess, on the test run's
database server; it starts its own fakes, s3rver, API and listeners, and kills
and restarts the listener while jobs run. Its exit code is the verdict on the
invariants; its summary line is checked here too, so a soak that injected no
fault or pushed fewer jobs cannot pass.
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
    counts = dict(pair.split("=") for pair in summary.group(5).split())
    assert {name: counts[name] for name in ZERO} == {name: "0" for name in ZERO}, report
    faults = dict(pair.split("=") for pair in re.search(r"^faults: (.*?) duration", report, re.M).group(1).split())
    assert int(faults["total"]) >= JOBS // 50, report  # the faults really happened
    assert int(faults["kill_listener"]) >= 1 and int(faults["restart"]) >= 1, report
    print(report)
