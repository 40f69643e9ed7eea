"""The cleanup walk: ``run`` deletes what a ``Policy`` says is due, batch by batch, under the named lock.

Every batch selects its rows, deletes their objects (a missing object is fine), then deletes (or,
for previews, clears) the rows whose objects all went, in one statement or transaction. Interrupted
anywhere, a batch leaves at most objects already gone whose rows remain, and the next run deletes
those objects again (nothing there) and then the rows. A storage error keeps the rows of its job (its
upload, its preview): never a row whose objects could not be deleted. The batch's other rows are
deleted as usual; after STORE_FAILING_AFTER consecutive errors the store is taken to be failing and
the rest of the batch is kept untouched. The run goes on with the next batch, reports the rows kept and
``gateway cleanup`` exits 1; they are selected again next time. Batches walk each kind in index order
with a cursor, so a dry run (or a row kept after an error) never reads the same rows twice in a run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.db import execute, query, query_one, utcnow
from shared.jobs import FINAL
from shared.storage.base import StorageError

# The package's logger, as before it was split: one name for every line about a cleanup.
log = logging.getLogger("shared.retention")

BATCH = 500
MAX_BATCH = 10_000
UPLOADS_HOURS = 24        # RETENTION_UPLOADS_HOURS unset (an upload is usable for a day)
UPLOAD_GRACE_S = 600      # an upload is deleted this long after it stopped being usable, at the earliest
STORE_FAILING_AFTER = 3   # consecutive storage errors: the store is failing, the rest of the batch waits
# What listener/finalize.py's preview_key() can name: a preview stored as its job ended may never have
# been recorded on the row, so a deleted job's folder is cleared of each of them.
PREVIEW_EXTENSIONS = (".jpg", ".png", ".webp")

LABELS = {"previews": "previews", "uploads": "uploads", "jobs": "outputs/jobs"}


@dataclass(frozen=True)
class Policy:
    """What a cleanup deletes. ``uploads_hours`` / ``days`` None: that kind is kept."""

    previews: bool = True
    uploads_hours: int | None = UPLOADS_HOURS
    days: int | None = None

    @classmethod
    def from_config(cls, cfg) -> "Policy":
        """The settings' policy: unset RETENTION_PREVIEWS and RETENTION_UPLOADS_HOURS delete (24 h); 0 keeps;
        RETENTION_DAYS unset or 0 keeps jobs forever."""
        hours = cfg.retention_uploads_hours
        return cls(previews=cfg.retention_previews is not False,
                   uploads_hours=UPLOADS_HOURS if hours is None else (hours or None),
                   days=cfg.retention_days or None)

@dataclass
class Tally:
    """One kind's counts in a run."""

    kind: str
    kept: str | None = None   # why the policy keeps this kind (then nothing was read)
    rows: int = 0             # jobs or uploads deleted, previews cleared (dry run: that would be)
    outputs: int = 0          # output images of those jobs
    failed: int = 0           # rows kept because their objects could not be deleted
    errors: list[str] = field(default_factory=list)

    def line(self, dry_run: bool) -> str:
        label = LABELS[self.kind]
        if self.kept:
            return f"{label}: kept ({self.kept})"
        count = f"{self.rows} job(s)" if self.kind == "jobs" else str(self.rows)
        text = f"{label}: {count} {'to delete (dry run)' if dry_run else 'deleted'}"
        if self.kind == "jobs":
            text += f", with {self.outputs} output image(s)"
        if self.failed:
            text += f"; {self.failed} kept after storage errors ({self.errors[0]})"
        return text


@dataclass
class Report:
    dry_run: bool
    tallies: dict[str, Tally]
    busy: bool = False      # another process holds the lock: nothing was done
    stopped: bool = False   # the listener is stopping: the run ended between two batches
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.busy and not any(t.failed for t in self.tallies.values())

    def lines(self) -> list[str]:
        return [t.line(self.dry_run) for t in self.tallies.values()]

    def summary(self) -> str:
        if self.busy:
            return "cleanup: skipped, another process is cleaning up"
        return (f"cleanup{' (dry run)' if self.dry_run else ''}: " + "; ".join(self.lines())
                + f"{'; stopped early' if self.stopped else ''} ({self.seconds:.1f} s)")


def run(db, store, policy: Policy, *, batch: int = BATCH, dry_run: bool = False, now: datetime | None = None,
        stopping: threading.Event | None = None, lock_wait_s: float = 0) -> Report:
    """Delete what ``policy`` says is due, batch by batch; a dry run only counts (and takes no lock)."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be 1 to {MAX_BATCH}")
    now = now or utcnow()
    started = time.monotonic()
    report = Report(dry_run, {kind: Tally(kind) for kind in LABELS})
    walk = _Walk(db, store, batch=batch, dry_run=dry_run, stopping=stopping)
    with db.connection():  # one session for the whole run: the lock is held by it
        if not dry_run and not _lock(db, lock_wait_s):
            report.busy = True
            log.info("%s", report.summary())
            return report
        try:
            tallies = report.tallies
            if policy.previews:
                walk.previews(tallies["previews"])
            else:
                tallies["previews"].kept = "RETENTION_PREVIEWS=0"
            if policy.uploads_hours:
                walk.uploads(tallies["uploads"], created_before=now - timedelta(hours=policy.uploads_hours),
                             expired_before=now - timedelta(seconds=UPLOAD_GRACE_S))
            else:
                tallies["uploads"].kept = "RETENTION_UPLOADS_HOURS=0"
            if policy.days:
                walk.jobs(tallies["jobs"], finished_before=now - timedelta(days=policy.days))
            else:
                tallies["jobs"].kept = "RETENTION_DAYS unset: kept forever"
        finally:
            if not dry_run:
                _unlock(db)
    report.stopped = walk.stopped()
    report.seconds = time.monotonic() - started
    log.log(logging.INFO if report.ok else logging.ERROR, "%s", report.summary())
    return report


# -- the named lock -----------------------------------------------------------------------------

# Named locks are server-wide: the database's name in it keeps two gateways (or two test runs) on one
# server apart. MySQL limits lock names to 64 characters.
_LOCK = "LEFT(CONCAT('comfy_gateway_cleanup:', DATABASE()), 64)"


def _lock(db, wait_s: float) -> bool:
    with db.connection() as conn:
        return query_one(conn, f"SELECT GET_LOCK({_LOCK}, %s) AS got", (wait_s,))["got"] == 1


def _unlock(db) -> None:
    try:
        with db.connection() as conn:
            query_one(conn, f"SELECT RELEASE_LOCK({_LOCK}) AS released")
    except Exception as e:  # a lost session has released it already
        log.warning("cleanup: lock not released (%s); the session's end releases it", type(e).__name__)


# -- the passes ---------------------------------------------------------------------------------

def _marks(values) -> str:
    return ",".join(["%s"] * len(values))


class _Walk:
    """The batches of one run."""

    def __init__(self, db, store, *, batch: int, dry_run: bool, stopping: threading.Event | None):
        self.db = db
        self.store = store
        self.batch = batch
        self.dry_run = dry_run
        self.stopping = stopping

    def stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def previews(self, tally: Tally) -> None:
        """Final jobs' previews: the object, then the column (the row stays)."""
        after = ""
        while not self.stopped():
            with self.db.connection() as conn:
                rows = query(conn, f"SELECT id, preview_key FROM jobs WHERE preview_key IS NOT NULL "
                                   f"AND status IN ({_marks(FINAL)}) AND id > %s ORDER BY id LIMIT %s",
                             (*FINAL, after, self.batch))
            if not rows:
                return
            after = rows[-1]["id"]
            ids = [r["id"] for r in self._objects_gone(tally, [(r, [r["preview_key"]]) for r in rows])]
            if ids:
                with self.db.connection() as conn:
                    # Final states never change, and only a running job gets a preview: a row cleared
                    # here keeps no preview it could have got meanwhile.
                    tally.rows += execute(conn, f"UPDATE jobs SET preview_key=NULL, version=version+1, "
                                                f"updated_at=%s WHERE id IN ({_marks(ids)}) "
                                                f"AND status IN ({_marks(FINAL)}) AND preview_key IS NOT NULL",
                                          (utcnow(), *ids, *FINAL))
            if len(rows) < self.batch:
                return

    def uploads(self, tally: Tally, *, created_before: datetime, expired_before: datetime) -> None:
        """Uploads too old to be used by any job: the object, then the row."""
        cursor = None
        while not self.stopped():
            sql = "SELECT id, object_key, expires_at FROM uploads WHERE expires_at < %s AND created_at < %s"
            args: list = [expired_before, created_before]
            if cursor:
                sql += " AND (expires_at > %s OR (expires_at = %s AND id > %s))"
                args += [cursor[0], cursor[0], cursor[1]]
            with self.db.connection() as conn:
                rows = query(conn, sql + " ORDER BY expires_at, id LIMIT %s", (*args, self.batch))
            if not rows:
                return
            cursor = rows[-1]["expires_at"], rows[-1]["id"]
            ids = [r["id"] for r in self._objects_gone(tally, [(r, [r["object_key"]]) for r in rows])]
            if ids:
                with self.db.connection() as conn:
                    tally.rows += execute(conn, f"DELETE FROM uploads WHERE id IN ({_marks(ids)})", ids)
            if len(rows) < self.batch:
                return

    def jobs(self, tally: Tally, *, finished_before: datetime) -> None:
        """Final jobs finished before the cutoff: every object of theirs, then their rows (usage kept)."""
        for status in FINAL:  # one status at a time: (finished_at, id) is then the index's own order
            cursor = None
            while not self.stopped():
                sql = ("SELECT id, user_id, preview_key, inputs, finished_at FROM jobs "
                       "WHERE status=%s AND finished_at < %s")
                args: list = [status, finished_before]
                if cursor:
                    sql += " AND (finished_at > %s OR (finished_at = %s AND id > %s))"
                    args += [cursor[0], cursor[0], cursor[1]]
                with self.db.connection() as conn:
                    rows = query(conn, sql + " ORDER BY finished_at, id LIMIT %s", (*args, self.batch))
                    ids = [r["id"] for r in rows]
                    outputs = query(conn, f"SELECT job_id, object_key FROM job_outputs "
                                          f"WHERE job_id IN ({_marks(ids)})", ids) if ids else []
                if not rows:
                    break
                cursor = rows[-1]["finished_at"], rows[-1]["id"]
                keys: dict[str, list[str]] = {r["id"]: [] for r in rows}
                for o in outputs:
                    keys[o["job_id"]].append(o["object_key"])
                if self.dry_run:
                    tally.outputs += len(outputs)
                gone = self._objects_gone(tally, [(r, keys[r["id"]] + _job_keys(r)) for r in rows])
                ids = [r["id"] for r in gone]
                if ids:
                    with self.db.transaction(isolation="READ COMMITTED") as conn:  # no gap locks on the outbox
                        execute(conn, f"DELETE FROM job_outputs WHERE job_id IN ({_marks(ids)})", ids)
                        execute(conn, f"DELETE FROM moderation_checks WHERE job_id IN ({_marks(ids)})", ids)
                        # An event still to be sent keeps its row (its payload needs no job row).
                        execute(conn, f"DELETE FROM outbox WHERE job_id IN ({_marks(ids)}) "
                                      "AND next_attempt_at IS NULL", ids)
                        tally.rows += execute(conn, f"DELETE FROM jobs WHERE id IN ({_marks(ids)}) "
                                                    f"AND status IN ({_marks(FINAL)})", (*ids, *FINAL))
                    tally.outputs += sum(len(keys[i]) for i in ids)
                if len(rows) < self.batch:
                    break

    def _objects_gone(self, tally: Tally, groups: list[tuple[dict, list[str]]]) -> list[dict]:
        """Delete each row's objects; the rows whose objects are all gone, which may go now (a dry run:
        none). A row with an object that could not be deleted is kept, and counted in ``tally.failed``."""
        if self.dry_run:
            tally.rows += len(groups)
            return []
        gone, failing, consecutive = [], set(), 0
        for row, keys in groups:
            ok = consecutive < STORE_FAILING_AFTER
            for key in dict.fromkeys(k for k in keys if k) if ok else ():
                if key in failing:
                    ok = False
                    break
                try:
                    self.store.delete(key)
                except ValueError as e:  # not a key any store could have written: nothing to delete
                    log.warning("cleanup (%s): skipped an invalid object key: %s", LABELS[tally.kind], e)
                except StorageError as e:
                    # This row keeps its rows (the next run retries); the batch's other rows go on.
                    failing.add(key)
                    consecutive += 1
                    if len(tally.errors) < 10:
                        tally.errors.append(str(e))
                    log.warning("cleanup (%s): %s kept, its object %s could not be deleted: %s",
                                LABELS[tally.kind], row.get("id"), key, e)
                    ok = False
                    break
                else:
                    consecutive = 0
            if ok:
                gone.append(row)
        kept = len(groups) - len(gone)
        if kept:
            tally.failed += kept
            if consecutive >= STORE_FAILING_AFTER:
                log.warning("cleanup (%s): %d consecutive storage errors, the store is failing: %d row(s) of this "
                            "batch kept", LABELS[tally.kind], consecutive, kept)
        return gone


def _job_keys(row: dict) -> list[str]:
    """Every object a job may have besides its recorded outputs: input copies and previews."""
    inputs = row["inputs"]
    if isinstance(inputs, (str, bytes)):
        inputs = json.loads(inputs)
    keys = [spec["key"] for spec in (inputs or {}).values() if isinstance(spec, dict) and spec.get("key")]
    keys.append(row["preview_key"])
    folder = f"users/{row['user_id']}/jobs/{row['id']}/preview"
    return keys + [folder + ext for ext in PREVIEW_EXTENSIONS]

