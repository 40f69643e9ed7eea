"""Retention: delete what the gateway no longer needs, in batches, safe to interrupt and to run again.

    gateway cleanup [--dry-run] [--batch N]

Three kinds, each its own pass (``Policy`` says which run, from the RETENTION_* settings):

* **previews**: a job's live preview (``jobs.preview_key``, ``users/<u>/jobs/<job>/preview.<ext>``)
  once the job is final. Apps are shown a preview only while the job runs.
* **uploads**: input images apps uploaded (``uploads`` rows, ``users/<u>/uploads/<id>.<ext>``) older
  than RETENTION_UPLOADS_HOURS and past their usable day by UPLOAD_GRACE_S. Nothing reads them then:
  a job keeps its own copy of its inputs under the job, and a submit refuses an expired upload (the
  grace covers a submit that checked one just before it expired and is still reading it).
* **jobs** (``outputs/jobs``): final jobs that finished more than RETENTION_DAYS ago: their output
  images, input copies and preview, then their ``job_outputs`` rows, their sent or given-up ``outbox``
  rows and the job row. An event still waiting to be sent keeps its row (its payload is
  self-contained; the sender prunes it once sent). **Usage records are never deleted**: no foreign
  key ties them, or anything else, to a job row (tests/test_retention.py checks the schema for one).

Only final jobs (succeeded, failed, cancelled) are ever read: submitting, queued, running, checking
and any state added later are not final and never touched.

One run at a time across processes (listeners and the command): a MySQL named lock per database. The
listener runs one every INTERVAL_S when any RETENTION_* setting is set (``Hourly``), and skips its
turn while another process holds the lock.

The package, by responsibility (every public name is importable from ``shared.retention``):

* ``cleanup.py``: the walk itself: ``Policy``, ``run`` and its ``Report``/``Tally``, the named lock,
  the batches of each kind (its docstring says why a batch is safe to interrupt and to run again).
* ``command.py``: ``gateway cleanup`` (``add_parser``, ``cmd_cleanup``).
* ``hourly.py``: the listener's thread (``Hourly``) and whether it runs (``scheduled``).
"""

from shared.retention.cleanup import (BATCH, LABELS, MAX_BATCH, PREVIEW_EXTENSIONS, STORE_FAILING_AFTER,
                                      UPLOAD_GRACE_S, UPLOADS_HOURS, Policy, Report, Tally, run)
from shared.retention.command import LOCK_WAIT_S, add_parser, cmd_cleanup
from shared.retention.hourly import FIRST_DELAY_S, INTERVAL_S, Hourly, scheduled

__all__ = [
    "BATCH", "FIRST_DELAY_S", "INTERVAL_S", "LABELS", "LOCK_WAIT_S", "MAX_BATCH", "PREVIEW_EXTENSIONS",
    "STORE_FAILING_AFTER", "UPLOAD_GRACE_S", "UPLOADS_HOURS",
    "Hourly", "Policy", "Report", "Tally",
    "add_parser", "cmd_cleanup", "run", "scheduled",
]
