"""Soak: nothing lost, nothing doubled, nothing stuck — under random faults, on real parts.

    .venv/bin/python bench/soak.py [--jobs 500] [--seed N] [--users 8] [--concurrency 12] [--timeout 240]
                                   [--database-url mysql://root:@127.0.0.1:3306/any] [--keep]

What runs (all on loopback):

* its own database ``gw_soak_<hex>`` on ``--database-url`` / TEST_DATABASE_URL / DATABASE_URL's server,
  else the MariaDB at 127.0.0.1:3306 (root, no password), else a private server
  (shared.localdb); migrated with shared.migrate and dropped at the end (``--keep`` keeps it);
* two fake ComfyUI servers (tests/fakes/comfyui.py), s3rver as object storage,
  ``gateway serve`` and ``gateway listen`` as subprocesses (tests/stack.py);
* ``--jobs`` small txt2img jobs from ``--users`` dev users over real HTTP, at most
  ``--concurrency`` in flight (each app submits with an Idempotency-Key, retries what the
  contract says to retry, polls until final); some are made to fail (the fake's
  ``fail_next``), some are cancelled (``POST /v1/jobs/{id}/cancel``);
* meanwhile a fault thread injects a bounded number of random faults: dropped sockets,
  silent sockets, ComfyUI restarts (with and without its output files), late history,
  failing and slow /view, 5xx/HTML answers on /history, /view and /prompt, ``kill -9`` of
  the listener (restarted after a pause) and a second listener for a while.

Then faults stop, every job is waited for (``--timeout`` bounds that wait) and the
invariants are checked against MySQL, the fakes and storage:

* lost: every job id an app received exists;
* stuck: no job is left submitting/queued/running;
* duplicate_outputs: no (job, node, index) twice, no succeeded job with more outputs
  than the history it was finished from lists, no failed/cancelled job with outputs;
* duplicate_usage: exactly one usage record per final job, none for anything else;
* image_mismatches: every image a succeeded job lists (fetched through
  ``GET /v1/jobs/{id}/result`` and its signed URL) has exactly the bytes ComfyUI
  saved for that prompt, and none is missing. A restart wipes the fake's history and
  files, so the expected bytes are captured inside each fake's event loop the moment
  it reports an output node (a hook on the fake's ``_report_ui``), per run;
* and (the ``checks:`` line) no prompt id submitted more than allowed (twice at most,
  the second time only in a later ComfyUI generation, i.e. after a restart lost it),
  no second job row for one app request, usage records that agree with their job,
  every failure and cancellation explained by an injected fault or a deliberate
  failure, nothing left in a fake's queue.

It prints exactly one summary line
``jobs=N succeeded=… failed=… cancelled=… lost=0 stuck=0 duplicate_outputs=0 duplicate_usage=0 image_mismatches=0``,
then the faults injected and the duration, the failures by error code and the
other checks; it exits 1 when an invariant fails (with the evidence: rows, fake
runs and log lines of each offending job; the logs are kept), 2 when the set-up fails.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402
import requests  # noqa: E402

from shared.config import Config, DatabaseUrl  # noqa: E402
from shared.db import connect, query  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from tests.s3server import S3rverUnavailable, start_s3rver  # noqa: E402
from tests.stack import database_server, start_api, start_listener  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("submitting", "queued", "running")
DELIBERATE = "soak: deliberate failure"
PROMPTS = ("a cat", "a lighthouse at dusk", "a bowl of ramen", "a red bicycle", "mountains in fog")

# Timings of the stack under test: short, so faults are noticed and settled within seconds.
STACK_ENV = {
    "COMFYUI_TIMEOUT": "5",
    "PROGRESS_INTERVAL": "0.25",
    "PREVIEW_INTERVAL": "1",
    "HISTORY_RETRY_S": "5",
    "RECONCILE_INTERVAL_S": "1",
    "WATCHDOG_S": "3",
    "LEASE_S": "3",
    "RECONNECT_MAX_S": "1",
    "OUTPUT_COPY_DEADLINE_S": "30",
    "SIGNED_URL_TTL": "3600",
}
# Not passed on by tests.stack.config_env: given to the subprocesses through the environment.
LIMITS_OFF = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_ACTIVE_JOBS": "0", "DAILY_JOB_QUOTA": "0",
              "LOGIN_RATE_LIMIT_PER_MINUTE": "0"}


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ======================================================================================
# What the fakes really did (captured inside their event loops; survives restarts)
# ======================================================================================

@dataclass
class FakeRun:
    """One execution of a prompt by a fake."""

    fake: int
    generation: int
    number: float
    outputs: dict = field(default_factory=dict)  # node_id -> [(type, filename, bytes|None)]
    outcome: str | None = None  # execution_success / execution_error / execution_interrupted / None (killed)
    error: str | None = None
    started: float | None = None  # wall times of execution_start and of the outcome
    ended: float | None = None

    def saved(self) -> list[tuple[str, int, bytes | None]]:
        """(node_id, index, bytes) of the saved images, as the gateway numbers them (finalize.saved_images)."""
        out = []
        for node_id in sorted(self.outputs, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n)):
            images = [img for img in self.outputs[node_id] if img[0] == "output" and img[1]]
            out += [(node_id, idx, img[2]) for idx, img in enumerate(images)]
        return out


class Recorder:
    """Hooks on each fake's loop: every run's saved bytes and outcome, every submission's generation.

    Uses the fake's internals (``_server``, ``_report_ui``, ``_add_message``,
    ``prompts_log``, ``generation``); ``install`` fails loudly if they change.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.runs: dict[str, list[FakeRun]] = collections.defaultdict(list)
        self.fakes: list[FakeComfy] = []

    def install(self, fake: FakeComfy) -> None:
        index = len(self.fakes)
        self.fakes.append(fake)
        server = fake._server
        for name in ("_report_ui", "_add_message", "prompts_log", "generation", "files"):
            if not hasattr(server, name):
                raise RuntimeError(f"the fake ComfyUI has no {name!r} any more: update bench/soak.py's Recorder")
        original_report, original_message = server._report_ui, server._add_message
        recorder = self

        def record_of(run) -> FakeRun:
            rec = getattr(run, "_soak_record", None)
            if rec is None:
                rec = FakeRun(fake=index, generation=server.generation, number=run.item.number)
                run._soak_record = rec
                with recorder.lock:
                    recorder.runs[run.prompt_id].append(rec)
            return rec

        async def report_ui(run, node_id, ui):
            if ui:
                images = []
                for img in ui.get("images") or []:
                    key = (img.get("type"), img.get("subfolder") or "", img.get("filename"))
                    images.append((img.get("type"), img.get("filename"), server.files.get(key)))
                record_of(run).outputs[node_id] = images
            return await original_report(run, node_id, ui)

        async def add_message(run, event, data, *, broadcast=False):
            rec = record_of(run)
            if event == "execution_start":
                rec.started = time.time()
            if event in ("execution_success", "execution_error", "execution_interrupted"):
                rec.ended = time.time()
                rec.outcome = event
                if event == "execution_error":
                    rec.error = str(data.get("exception_message") or "").strip()
            return await original_message(run, event, data, broadcast=broadcast)

        class GenerationLog(list):
            """prompts_log whose entries also say in which generation (restart count) they arrived."""

            def append(self, item):
                item["generation"] = server.generation
                list.append(self, item)

        def install_hooks(s):
            s._report_ui = report_ui
            s._add_message = add_message
            s.prompts_log = GenerationLog(s.prompts_log)

        fake._call(install_hooks)

    def runs_of(self, prompt_id: str) -> list[FakeRun]:
        with self.lock:
            return list(self.runs.get(prompt_id, ()))

    def submissions(self) -> dict[str, list[tuple[int, int]]]:
        """prompt_id -> [(fake index, generation)] of every accepted POST /prompt."""
        out: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for index, fake in enumerate(self.fakes):
            for pid, gen in fake._call(lambda s: [(p["prompt_id"], p.get("generation")) for p in s.prompts_log]):
                out[pid].append((index, gen))
        return out

    def generation(self, index: int) -> int:
        return self.fakes[index]._call(lambda s: s.generation)

    def leftovers(self, index: int) -> list[str]:
        """Prompt ids still queued or running on a fake."""
        return self.fakes[index]._call(
            lambda s: [i.prompt_id for i in s.pending] + ([s.running.prompt_id] if s.running else []))


# ======================================================================================
# The stack
# ======================================================================================

class Stack:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.local_db = None
        self.admin = None
        self.db_name = None
        self.db_url: DatabaseUrl | None = None
        self.fakes: list[FakeComfy] = []
        self.recorder = Recorder()
        self.s3 = None
        self.cfg: Config | None = None
        self.api = None
        self.base = ""
        self.listeners: dict[str, object] = {}
        self.lock = threading.Lock()

    def start(self) -> None:
        server, self.local_db = database_server(self.args.database_url or os.environ.get("TEST_DATABASE_URL")
                                                 or os.environ.get("DATABASE_URL"),
                                                 self.workdir / "mysql" / "data")
        self.db_name = f"gw_soak_{uuid.uuid4().hex[:10]}"
        self.admin = connect(server, database=False)
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        self.db_url = server.with_database(self.db_name)
        conn = connect(self.db_url)
        try:
            migrate(conn)
        finally:
            conn.close()

        for _ in range(2):
            fake = FakeComfy(step_delay=self.args.step_delay)
            fake.start()
            self.recorder.install(fake)
            self.fakes.append(fake)

        self.s3 = start_s3rver(self.workdir / "s3rver", "soak")
        os.environ.update(LIMITS_OFF)
        os.environ["AWS_ACCESS_KEY_ID"] = self.s3.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = self.s3.secret_key
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        db = self.db_url
        env = {
            "DATABASE_URL": f"mysql://{db.user}:{db.password}@{db.host}:{db.port}/{db.database}",
            "COMFYUI_URLS": ",".join(f.base_url for f in self.fakes),
            "STORAGE_URL": f"s3://{self.s3.bucket}/soak",
            "S3_ENDPOINT_URL": self.s3.endpoint_url,
            "SECRET_KEY": secrets.token_hex(24),
            "DEV_LOGIN": "1",
            "ADMIN_TOKEN": "admin-" + secrets.token_hex(8),
            "STATE_DIR": str(self.workdir / "state"),
            **LIMITS_OFF,
            **STACK_ENV,
        }
        self.cfg = Config.from_env(env)
        self.start_listener("listener")
        self.api, self.base = start_api(self.cfg, self.workdir)
        deadline = time.monotonic() + 30
        while not self.all_connected():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the listener never connected to both fakes; see {self.workdir / 'listener.log'}")
            time.sleep(0.1)

    def all_connected(self) -> bool:
        try:
            body = requests.get(self.base + "/healthz", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        return len(body.get("backends", [])) == 2 and all(b["listener_connected"] for b in body["backends"])

    # -- listeners ------------------------------------------------------------------------
    def start_listener(self, name: str):
        with self.lock:
            proc = self.listeners.get(name)
            if proc is not None and proc.proc.poll() is None:
                return proc
            proc = start_listener(self.cfg, self.workdir, name)
            self.listeners[name] = proc
            return proc

    def live_listeners(self) -> list[str]:
        with self.lock:
            return [n for n, p in self.listeners.items() if p.proc.poll() is None]

    def kill_listener(self, name: str) -> None:
        with self.lock:
            proc = self.listeners.get(name)
        if proc is not None:
            proc.kill(signal.SIGKILL)

    def stop_listener(self, name: str) -> None:
        with self.lock:
            proc = self.listeners.get(name)
        if proc is not None and proc.proc.poll() is None:
            proc.kill(signal.SIGTERM)

    def listener_logs(self) -> str:
        text = []
        for path in sorted(self.workdir.glob("listener*.log")):
            text.append(path.read_text(errors="replace"))
        return "\n".join(text)

    def fake_index(self, url: str) -> int:
        for i, fake in enumerate(self.fakes):
            if fake.base_url == url:
                return i
        return -1

    # -- teardown -------------------------------------------------------------------------
    def stop(self, keep_db: bool) -> None:
        steps = [lambda: self.api and self.api.stop()]
        for name in list(self.listeners):
            steps.append(lambda n=name: self.listeners[n].stop())
        steps += [lambda f=f: f.stop() for f in self.fakes]
        steps.append(lambda: self.s3 and self.s3.stop())
        if self.admin is not None and self.db_name and not keep_db:
            def drop():
                with self.admin.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{self.db_name}`")
            steps.append(drop)
        steps.append(lambda: self.admin and self.admin.close())
        steps.append(lambda: self.local_db and self.local_db.stop())
        for step in steps:
            try:
                step()
            except Exception as e:  # tear down as much as possible
                say(f"soak: teardown step failed: {e}")


# ======================================================================================
# Faults
# ======================================================================================

# kind -> (weight after the first round, at most this many per 100 jobs)
FAULTS = {
    "drop_sockets": (3, 4),
    "go_silent": (2, 3),
    "restart": (2, 3),
    "delay_history": (2, 3),
    "fail_view": (3, 4),
    "slow_view": (2, 3),
    "fail_http_history": (3, 4),
    "fail_http_view": (2, 3),
    "fail_http_prompt": (1, 2),
    "kill_listener": (2, 3),
    "second_listener": (1, 2),
}


class FaultInjector(threading.Thread):
    """Injects a planned, bounded list of random faults at random times until told to stop.

    Faults that last (silence, late history, slow /view, a killed listener's pause,
    a second listener) register their undo; every undo runs when due or at the end.
    """

    def __init__(self, stack: Stack, rng: random.Random, jobs: int, interval: tuple[float, float]):
        super().__init__(name="faults", daemon=True)
        self.stack = stack
        self.rng = rng
        self.interval = interval
        self.stop_event = threading.Event()
        self.counts: collections.Counter = collections.Counter()
        self.events: list[tuple[float, str, int | None, str]] = []  # (wall time, kind, fake, detail)
        self.restarts: list[tuple[int, float, float]] = []  # (fake, wall from, wall until up again)
        self.undo: list[tuple[float, str, object]] = []
        self.down_until = [0.0] * len(stack.fakes)
        self.failed: list[str] = []
        self.plan = self._plan(jobs)

    def _plan(self, jobs: int) -> list[str]:
        caps = {k: max(1, round(per100 * jobs / 100)) for k, (_, per100) in FAULTS.items()}
        first = list(FAULTS)
        self.rng.shuffle(first)
        plan = list(first)
        budget = max(len(FAULTS), jobs // 7)
        kinds, weights = list(FAULTS), [w for w, _ in FAULTS.values()]
        used = collections.Counter(plan)
        while len(plan) < budget:
            kind = self.rng.choices(kinds, weights)[0]
            if used[kind] < caps[kind]:
                plan.append(kind)
                used[kind] += 1
            elif all(used[k] >= caps[k] for k in kinds):
                break
        return plan

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)

    def run(self) -> None:
        try:
            for kind in self.plan:
                if not self._wait(self.rng.uniform(*self.interval)):
                    break
                try:
                    self.inject(kind)
                except Exception as e:
                    self.failed.append(f"{kind}: {e!r}")
            self._wait(None)
        finally:
            self._undo_all()

    def _wait(self, seconds: float | None) -> bool:
        """Sleep (running due undos) for ``seconds``, or until stopped when None; False once stopped."""
        end = None if seconds is None else time.monotonic() + seconds
        while not self.stop_event.is_set():
            now = time.monotonic()
            self._run_due(now)
            if end is not None and now >= end:
                return True
            next_due = min([u[0] for u in self.undo], default=now + 0.5)
            limit = next_due if end is None else min(end, next_due)
            self.stop_event.wait(max(0.01, min(limit - now, 0.5)))
        return False

    def _later(self, delay: float, what: str, action) -> None:
        self.undo.append((time.monotonic() + delay, what, action))

    def _run_due(self, now: float) -> None:
        due = [u for u in self.undo if u[0] <= now]
        self.undo = [u for u in self.undo if u[0] > now]
        for _, what, action in due:
            try:
                action()
            except Exception as e:
                self.failed.append(f"undo {what}: {e!r}")

    def _undo_all(self) -> None:
        pending, self.undo = self.undo, []
        for _, what, action in sorted(pending, key=lambda u: u[0]):
            try:
                action()
            except Exception as e:
                self.failed.append(f"undo {what}: {e!r}")

    def _note(self, kind: str, fake: int | None, detail: str = "") -> None:
        self.counts[kind] += 1
        self.events.append((time.time(), kind, fake, detail))

    def inject(self, kind: str) -> None:
        rng, stack = self.rng, self.stack
        i = rng.randrange(len(stack.fakes))
        fake = stack.fakes[i]
        if kind == "drop_sockets":
            fake.drop_sockets()
            self._note(kind, i)
        elif kind == "go_silent":
            seconds = rng.uniform(1.0, 5.0)
            fake.go_silent(True)
            self._later(seconds, kind, lambda: fake.go_silent(False))
            self._note(kind, i, f"{seconds:.1f}s")
        elif kind == "restart":
            now = time.monotonic()
            if self.down_until[i] > now:
                i = 1 - i
                fake = stack.fakes[i]
                if self.down_until[i] > now:
                    return
            downtime = rng.uniform(0.2, 1.5)
            keep = rng.random() < 0.5
            start = time.time()
            fake.restart(downtime, wait=False, keep_files=keep)
            self.down_until[i] = now + downtime + 0.2
            self.restarts.append((i, start, start + downtime + 0.5))
            self._note(kind, i, f"down {downtime:.1f}s, files {'kept' if keep else 'lost'}")
        elif kind == "delay_history":
            seconds, lasting = rng.uniform(0.5, 3.0), rng.uniform(2.0, 6.0)
            fake.delay_history(seconds)
            self._later(lasting, kind, lambda: fake.delay_history(0))
            self._note(kind, i, f"{seconds:.1f}s for {lasting:.1f}s")
        elif kind == "fail_view":
            times = rng.randint(1, 3)
            fake.fail_view(rng.choice((500, 502, 503)), times=times)
            self._note(kind, i, f"x{times}")
        elif kind == "slow_view":
            seconds, lasting = rng.uniform(0.2, 1.0), rng.uniform(2.0, 5.0)
            fake.slow_view(seconds)
            self._later(lasting, kind, lambda: fake.slow_view(0))
            self._note(kind, i, f"{seconds:.1f}s for {lasting:.1f}s")
        elif kind in ("fail_http_history", "fail_http_view", "fail_http_prompt"):
            path = {"fail_http_history": "/history", "fail_http_view": "/view", "fail_http_prompt": "/prompt"}[kind]
            times = rng.randint(1, 2 if path == "/prompt" else 5)
            status, html = rng.choice((500, 502, 503, 504)), rng.random() < 0.5
            fake.fail_http(path, status=status, times=times, html=html)
            self._note(kind, i, f"{status}{' html' if html else ''} x{times}")
        elif kind == "kill_listener":
            live = stack.live_listeners()
            if not live:
                return
            name = rng.choice(live)
            stack.kill_listener(name)
            if name == "listener":
                pause = rng.uniform(0.5, 3.0)
                self._later(pause, "restart listener", lambda: stack.start_listener("listener"))
                self._note(kind, None, f"{name}, back after {pause:.1f}s")
            else:
                self._note(kind, None, name)
        elif kind == "second_listener":
            if "listener2" in stack.live_listeners():
                return
            lasting = rng.uniform(5.0, 15.0)
            stack.start_listener("listener2")
            self._later(lasting, "stop listener2", lambda: stack.stop_listener("listener2"))
            self._note(kind, None, f"for {lasting:.1f}s")
        else:
            raise ValueError(kind)

    def restarted_during(self, fake: int, start: float, end: float) -> bool:
        return any(f == fake and s <= end + 1 and u >= start - 1 for f, s, u in self.restarts)

    def summary(self) -> str:
        return " ".join(f"{k}={self.counts[k]}" for k in FAULTS) + f" total={sum(self.counts.values())}"


# ======================================================================================
# The apps
# ======================================================================================

@dataclass
class JobSpec:
    n: int
    user: int
    params: dict
    cancel_after: float | None
    fail_fake: int | None
    fail_step: int
    key: str


@dataclass
class JobRecord:
    spec: JobSpec
    job_id: str | None = None
    submit_tries: int = 0
    submit_statuses: list = field(default_factory=list)
    cancel: str | None = None  # requested / finished_first / not_reached / error
    cancel_sent: float | None = None  # wall times around the cancel request that got its answer
    cancel_answered: float | None = None
    cancel_answer: dict | None = None
    last: dict | None = None
    problem: str | None = None


def make_specs(rng: random.Random, n: int, users: int, cancel_ratio: float, fail_ratio: float) -> list[JobSpec]:
    specs = []
    for k in range(n):
        params = {"prompt": rng.choice(PROMPTS), "width": rng.choice((64, 64, 72, 80)),
                  "height": rng.choice((64, 64, 72)), "steps": rng.randint(2, 6),
                  "batch_size": rng.choice((1, 1, 2)), "seed": rng.randrange(2 ** 32)}
        if specs and rng.random() < 0.03:
            params = dict(rng.choice(specs).params)  # the same request again: ComfyUI's cache may answer
        cancel_after = rng.uniform(0.0, 0.6) if rng.random() < cancel_ratio else None
        fail_fake = rng.randrange(2) if cancel_after is None and rng.random() < fail_ratio else None
        specs.append(JobSpec(n=k, user=k % users, params=params, cancel_after=cancel_after, fail_fake=fail_fake,
                             fail_step=rng.randint(1, params["steps"]), key=f"soak-{k}-{uuid.uuid4().hex[:8]}"))
    return specs


class App:
    """The mobile apps: one token per dev user, one HTTP session per thread."""

    RETRY = {500, 502, 503, 504}

    def __init__(self, base: str, users: int):
        self.base = base
        self.local = threading.local()
        self.tokens: list[str] = []
        self.user_ids: list[str] = []
        for u in range(users):
            r = self.request("POST", "/v1/auth/dev", {"user": f"soak-user-{u}"}, token=None)
            if r.status_code != 200:
                raise RuntimeError(f"dev login failed: {r.status_code} {r.text}")
            self.tokens.append(r.json()["token"])
            self.user_ids.append(r.json()["user"]["id"])

    def session(self) -> requests.Session:
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
        return s

    def request(self, method: str, path: str, body=None, *, token: str | None, headers=None, timeout=20):
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return self.session().request(method, self.base + path, json=body, headers=h, timeout=timeout)


def run_job(app: App, stack: Stack, spec: JobSpec, armed: collections.Counter, armed_lock: threading.Lock,
            poll_limit: float) -> JobRecord:
    rec = JobRecord(spec)
    token = app.tokens[spec.user]
    body = {"workflow": "txt2img", "params": spec.params}
    if spec.fail_fake is not None:
        stack.fakes[spec.fail_fake].fail_next(at_step=spec.fail_step, message=DELIBERATE)
        with armed_lock:
            armed[spec.fail_fake] += 1
    # Submit: retry what the contract says is temporary, with the same Idempotency-Key.
    deadline = time.monotonic() + 90
    delay = 0.2
    while True:
        rec.submit_tries += 1
        try:
            r = app.request("POST", "/v1/jobs", body, token=token, headers={"Idempotency-Key": spec.key})
            rec.submit_statuses.append(r.status_code)
            if r.status_code in (200, 202):
                rec.job_id = r.json()["job"]["id"]
                rec.last = r.json()["job"]
                break
            if r.status_code not in App.RETRY:
                rec.problem = f"submit answered {r.status_code}: {r.text[:300]}"
                return rec
        except requests.RequestException as e:
            rec.submit_statuses.append(type(e).__name__)
        if time.monotonic() + delay > deadline:
            rec.problem = f"submit abandoned after {rec.submit_tries} tries: {rec.submit_statuses[-5:]}"
            return rec
        time.sleep(delay)
        delay = min(delay * 2, 2.0)

    cancel_at = time.monotonic() + spec.cancel_after if spec.cancel_after is not None else None
    end = time.monotonic() + poll_limit
    while time.monotonic() < end:
        if cancel_at is not None and time.monotonic() >= cancel_at:
            cancel_at = None
            rec.cancel = cancel_job(app, token, rec.job_id, rec)
        try:
            r = app.request("GET", f"/v1/jobs/{rec.job_id}", token=token)
            if r.status_code == 200:
                rec.last = r.json()["job"]
                if rec.last["status"] in FINAL:
                    if cancel_at is not None:
                        rec.cancel = "not_reached"
                    return rec
            elif r.status_code not in App.RETRY:
                rec.problem = f"status answered {r.status_code}: {r.text[:300]}"
        except requests.RequestException:
            pass
        wait = (rec.last or {}).get("poll_after_ms") or 500
        pause = min(max(wait / 1000.0, 0.2), 1.0)
        if cancel_at is not None:
            pause = max(0.0, min(pause, cancel_at - time.monotonic()))
        time.sleep(pause)
    if cancel_at is not None:
        rec.cancel = "not_reached"
    return rec  # not final yet: the drain phase waits for it


def cancel_job(app: App, token: str, job_id: str, rec: JobRecord) -> str:
    for _ in range(6):
        try:
            rec.cancel_sent = time.time()
            r = app.request("POST", f"/v1/jobs/{job_id}/cancel", token=token)
            rec.cancel_answered = time.time()
        except requests.RequestException:
            time.sleep(0.5)
            continue
        if r.status_code == 202:
            rec.cancel_answer = r.json()["job"]
            return "requested"
        if r.status_code == 409:
            return "finished_first"
        if r.status_code in App.RETRY:  # the request is recorded; try to get it through anyway
            time.sleep(0.5)
            continue
        return f"error {r.status_code}"
    return "requested_503"


# ======================================================================================
# The checks
# ======================================================================================

class Checker:
    def __init__(self, stack: Stack, app: App, records: list[JobRecord], faults: FaultInjector,
                 armed: collections.Counter):
        self.stack = stack
        self.app = app
        self.records = records
        self.faults = faults
        self.armed = armed
        self.problems: dict[str, list[str]] = collections.defaultdict(list)  # job id -> why
        self.counts = collections.Counter()
        self.info: list[str] = []

    def flag(self, counter: str, job_id: str | None, why: str, n: int = 1) -> None:
        self.counts[counter] += n
        self.problems[job_id or "-"].append(f"{counter}: {why}")

    def run(self) -> None:
        conn = connect(self.stack.db_url)
        try:
            self.jobs = {r["id"]: r for r in query(conn, "SELECT * FROM jobs")}
            self.backends = {r["id"]: r["url"] for r in query(conn, "SELECT id, url FROM backends")}
            self.outputs = collections.defaultdict(list)
            for r in query(conn, "SELECT * FROM job_outputs ORDER BY job_id, node_id, idx, id"):
                self.outputs[r["job_id"]].append(r)
            self.usage = collections.defaultdict(list)
            for r in query(conn, "SELECT * FROM usage_records ORDER BY id"):
                self.usage[r["job_id"]].append(r)
        finally:
            conn.close()
        self.submissions = self.stack.recorder.submissions()
        self.check_jobs()
        self.check_outputs()
        self.check_usage()
        self.check_submissions()
        self.check_failures()
        self.check_images()
        self.check_fakes_idle()

    # -- lost, extra, stuck --------------------------------------------------------------
    def check_jobs(self) -> None:
        self.known = {r.job_id: r for r in self.records if r.job_id}
        for job_id, rec in self.known.items():
            if job_id not in self.jobs:
                self.flag("lost", job_id, f"the app got job {job_id} (request {rec.spec.n}) but it has no row")
        for rec in self.records:
            if rec.job_id is None:
                self.flag("submit_abandoned", None, f"request {rec.spec.n}: {rec.problem}")
            elif rec.problem:
                self.flag("api_errors", rec.job_id, rec.problem)
        for job_id, row in self.jobs.items():
            if job_id not in self.known:
                self.flag("extra_jobs", job_id, f"a row no app request got back (status {row['status']}, "
                                                f"key {row['idempotency_key']})")
            if row["status"] in ACTIVE:
                self.flag("stuck", job_id, f"still {row['status']}")

    # -- outputs ------------------------------------------------------------------------
    def expected_runs(self, job_id: str) -> list[FakeRun]:
        return [r for r in self.stack.recorder.runs_of(job_id) if r.outcome == "execution_success"]

    def check_outputs(self) -> None:
        seen = collections.Counter()
        for job_id, outs in self.outputs.items():
            for o in outs:
                seen[(job_id, o["node_id"], o["idx"])] += 1
        for (job_id, node, idx), n in seen.items():
            if n > 1:
                self.flag("duplicate_outputs", job_id, f"output ({node}, {idx}) recorded {n} times", n - 1)
        for job_id, outs in self.outputs.items():
            row = self.jobs.get(job_id)
            status = row["status"] if row else None
            if status != "succeeded":
                self.flag("duplicate_outputs", job_id, f"{len(outs)} output(s) on a job that is {status}", len(outs))
                continue
            runs = self.expected_runs(job_id)
            listed = {len(r.saved()) for r in runs}
            if runs and len(outs) > max(listed):
                self.flag("duplicate_outputs", job_id,
                          f"{len(outs)} outputs, the history of its run(s) lists {sorted(listed)}",
                          len(outs) - max(listed))

    # -- usage --------------------------------------------------------------------------
    def check_usage(self) -> None:
        for job_id, row in self.jobs.items():
            records = self.usage.get(job_id, [])
            if row["status"] in FINAL:
                if len(records) != 1:
                    self.flag("duplicate_usage", job_id, f"{len(records)} usage records for a {row['status']} job",
                              max(1, abs(len(records) - 1)))
                    continue
                u = records[0]
                images = len(self.outputs.get(job_id, [])) if row["status"] == "succeeded" else 0
                if u["status"] != row["status"] or u["images"] != images:
                    self.flag("usage_mismatches", job_id, f"usage says {u['status']}/{u['images']} image(s), "
                                                          f"the job is {row['status']}/{images}")
            elif records:
                self.flag("duplicate_usage", job_id, f"{len(records)} usage record(s) for a {row['status']} job",
                          len(records))
        for job_id, records in self.usage.items():
            if job_id not in self.jobs:
                self.flag("duplicate_usage", job_id, "usage record(s) of a job that has no row", len(records))

    # -- what reached the fakes -----------------------------------------------------------
    def check_submissions(self) -> None:
        self.resubmitted = 0
        for job_id, subs in self.submissions.items():
            row = self.jobs.get(job_id)
            if row is None:
                runs = self.stack.recorder.runs_of(job_id)
                ran = [r for r in runs if r.outcome == "execution_success"]
                if ran:
                    self.flag("orphan_runs", job_id, f"ComfyUI ran prompt {job_id} to success {len(ran)} time(s) "
                                                     f"but no job row has that id (submissions {subs})")
                else:
                    self.info.append(f"prompt {job_id} reached a fake without a job row (never ran to the end): {subs}")
                continue
            if len(subs) > 1:
                self.resubmitted += 1
            fakes = {f for f, _ in subs}
            gens = [g for _, g in subs]
            if len(fakes) > 1:
                self.flag("over_submitted", job_id, f"submitted to {len(fakes)} different ComfyUI servers: {subs}")
            if len(subs) > 2:
                self.flag("over_submitted", job_id, f"submitted {len(subs)} times: {subs}")
            elif len(subs) == 2 and gens[1] is not None and gens[0] is not None and gens[1] <= gens[0]:
                self.flag("over_submitted", job_id, f"submitted twice to the same ComfyUI generation: {subs}")
            if len(subs) != row["submit_attempts"] and len(subs) > row["submit_attempts"]:
                self.flag("over_submitted", job_id, f"{len(subs)} submissions but submit_attempts="
                                                    f"{row['submit_attempts']}")

    # -- were the failures earned? ------------------------------------------------------------
    def check_failures(self) -> None:
        self.error_codes = collections.Counter()
        for job_id, row in self.jobs.items():
            rec = self.known.get(job_id)
            fake = self.stack.fake_index(self.backends.get(row["backend_id"], ""))
            start = row["created_at"].replace(tzinfo=timezone.utc).timestamp()
            end = (row["finished_at"] or now_utc()).replace(tzinfo=timezone.utc).timestamp()
            restarted = self.faults.restarted_during(fake, start, end)
            if row["status"] == "failed":
                code = row["error_code"]
                self.error_codes[code] += 1
                runs = self.stack.recorder.runs_of(job_id)
                if code == "execution_error":
                    ok = any(r.outcome == "execution_error" and DELIBERATE in (r.error or "") for r in runs)
                    why = "no deliberate failure ran for it"
                elif code == "backend_lost":
                    ok = restarted
                    why = "its ComfyUI server did not restart while it was active"
                elif code == "output_copy_failed":
                    ok = restarted
                    why = "its ComfyUI server did not restart while it was active (view faults alone are " \
                          "shorter than OUTPUT_COPY_DEADLINE_S)"
                else:
                    ok, why = False, "no injected fault explains this error code"
                if not ok:
                    self.flag("unexplained_failures", job_id, f"failed with {code} ({row['error_message']}): {why}")
            if row["status"] != "cancelled" and rec is not None and rec.cancel == "requested":
                # The cancel was accepted (202): only a prompt already running then may still finish.
                late = [r for r in self.stack.recorder.runs_of(job_id) if r.outcome == "execution_success"
                        and r.started and rec.cancel_answered and r.started > rec.cancel_answered]
                if late:
                    self.flag("cancels_ignored", job_id, f"cancel accepted (202, job then "
                              f"{(rec.cancel_answer or {}).get('status')}) at {rec.cancel_answered:.3f}, yet the "
                              f"prompt started {late[0].started - rec.cancel_answered:.3f}s later and ended "
                              f"{row['status']}")
            if row["status"] == "cancelled":
                if rec is None or rec.cancel is None:
                    self.flag("unexplained_failures", job_id, "cancelled, but no app asked to cancel it")
                if row["cancel_requested"] != 1:
                    self.flag("unexplained_failures", job_id, "cancelled without cancel_requested")

    # -- bytes ------------------------------------------------------------------------------
    def check_images(self) -> None:
        succeeded = [j for j, r in self.jobs.items() if r["status"] == "succeeded" and j in self.known]
        with ThreadPoolExecutor(8) as pool:
            for job_id, problems, fetched in pool.map(self._check_job_images, succeeded):
                self.counts["images_checked"] += fetched
                for n, why in problems:
                    self.flag("image_mismatches", job_id, why, n)

    def _check_job_images(self, job_id: str):
        rec = self.known[job_id]
        token = self.app.tokens[rec.spec.user]
        problems = []
        try:
            r = self.app.request("GET", f"/v1/jobs/{job_id}/result", token=token)
        except requests.RequestException as e:
            return job_id, [(1, f"GET /result failed: {e}")], 0
        if r.status_code != 200:
            return job_id, [(1, f"GET /result answered {r.status_code}: {r.text[:200]}")], 0
        images = r.json()["images"]
        got = {}
        for img in images:
            try:
                data = self.app.session().get(img["url"], timeout=20)
                got[(img["node_id"], img["index"])] = data.content if data.status_code == 200 else None
                if data.status_code != 200:
                    problems.append((1, f"image {img['node_id']}/{img['index']}: storage answered "
                                        f"{data.status_code}"))
                elif img["bytes"] != len(data.content):
                    problems.append((1, f"image {img['node_id']}/{img['index']}: {len(data.content)} bytes, "
                                        f"the result says {img['bytes']}"))
            except requests.RequestException as e:
                got[(img["node_id"], img["index"])] = None
                problems.append((1, f"image {img['node_id']}/{img['index']}: {e}"))
        runs = self.expected_runs(job_id)
        if not runs:
            return job_id, problems + [(max(1, len(images)), "succeeded, but no fake ever ran it to success")], \
                len(images)
        best = None
        for run in runs:
            expected = run.saved()
            missing = [(n, i) for n, i, b in expected if got.get((n, i)) is None]
            differ = [(n, i) for n, i, b in expected if got.get((n, i)) is not None and got[(n, i)] != b]
            score = len(missing) + len(differ)
            if best is None or score < best[0]:
                best = (score, missing, differ, run)
        score, missing, differ, run = best
        if missing:
            problems.append((len(missing), f"image(s) {missing} of run (fake {run.fake}, generation "
                                           f"{run.generation}) are missing from the result"))
        if differ:
            problems.append((len(differ), f"image(s) {differ} differ from what fake {run.fake} saved "
                                          f"(generation {run.generation})"))
        return job_id, problems, len(images)

    def check_fakes_idle(self) -> None:
        for i in range(len(self.stack.fakes)):
            for pid in self.stack.recorder.leftovers(i):
                self.flag("ghost_prompts", pid, f"still queued/running on fake {i} after every job is final")

    # -- reporting -------------------------------------------------------------------------
    def evidence(self, job_id: str, logs: str) -> str:
        lines = [f"job {job_id}:"]
        for why in self.problems.get(job_id, []):
            lines.append(f"  - {why}")
        row = self.jobs.get(job_id)
        if row:
            keep = ("status", "error_code", "error_message", "submit_attempts", "backend_id", "client_id",
                    "cancel_requested", "number", "created_at", "submitted_at", "started_at", "finished_at")
            lines.append("  row: " + ", ".join(f"{k}={row[k]}" for k in keep))
        rec = self.known.get(job_id)
        if rec:
            lines.append(f"  app: request {rec.spec.n}, params {rec.spec.params}, cancel={rec.cancel}, "
                         f"deliberate_failure={rec.spec.fail_fake is not None}, last status "
                         f"{(rec.last or {}).get('status')}")
        lines.append(f"  submissions (fake, generation): {self.submissions.get(job_id, [])}")
        for run in self.stack.recorder.runs_of(job_id):
            lines.append(f"  fake run: fake {run.fake} gen {run.generation} number {run.number} outcome "
                         f"{run.outcome} images {[(n, i, len(b or b'')) for n, i, b in run.saved()]}")
        lines.append(f"  outputs: {[(o['node_id'], o['idx'], o['bytes']) for o in self.outputs.get(job_id, [])]}")
        lines.append(f"  usage: {[(u['status'], u['images']) for u in self.usage.get(job_id, [])]}")
        matching = [ln for ln in logs.splitlines() if job_id in ln]
        if matching:
            lines.append("  log lines:")
            lines += [f"    {ln}" for ln in matching[:15]]
        return "\n".join(lines)


# ======================================================================================
# Main
# ======================================================================================

SUMMARY_KEYS = ("lost", "stuck", "duplicate_outputs", "duplicate_usage", "image_mismatches")
CHECK_KEYS = ("extra_jobs", "over_submitted", "orphan_runs", "usage_mismatches", "unexplained_failures",
              "cancels_ignored", "ghost_prompts", "submit_abandoned", "api_errors")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Soak the gateway under random faults and check its invariants.")
    p.add_argument("--jobs", type=int, default=500, help="how many jobs to push (default 500)")
    p.add_argument("--seed", type=int, default=None, help="random seed of jobs and faults (default: random)")
    p.add_argument("--database-url", default=None,
                   help="a MySQL/MariaDB server as mysql://user:pass@host:port/any_db; the soak creates and drops "
                        "its own database there")
    p.add_argument("--users", type=int, default=8, help="dev users submitting (default 8)")
    p.add_argument("--concurrency", type=int, default=12, help="jobs in flight at once (default 12)")
    p.add_argument("--timeout", type=float, default=240.0,
                   help="seconds to wait for every job to be final once the faults stop (default 240)")
    p.add_argument("--cancel-ratio", type=float, default=0.08, help="share of jobs cancelled (default 0.08)")
    p.add_argument("--fail-ratio", type=float, default=0.05, help="share of jobs made to fail (default 0.05)")
    p.add_argument("--step-delay", type=float, default=0.02, help="seconds per sampler step in the fakes")
    p.add_argument("--fault-interval", type=float, nargs=2, default=(0.4, 2.0), metavar=("MIN", "MAX"),
                   help="seconds between two faults (default 0.4 2.0)")
    p.add_argument("--no-faults", action="store_true", help="push the jobs without injecting faults")
    p.add_argument("--keep", action="store_true", help="keep the database and the logs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2 ** 31)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    say(f"soak: seed {seed}, {args.jobs} jobs, logs in {workdir}")
    started = time.monotonic()
    stack = Stack(args, workdir)
    ok = False
    try:
        try:
            stack.start()
            app = App(stack.base, args.users)
        except (S3rverUnavailable, RuntimeError, OSError, pymysql.err.Error, AssertionError) as e:
            say(f"soak: set-up failed: {e}")
            traceback.print_exc()
            return 2
        say(f"soak: stack up in {time.monotonic() - started:.1f}s (API {stack.base}, fakes "
            f"{', '.join(f.base_url for f in stack.fakes)}, database {stack.db_name})")

        specs = make_specs(rng, args.jobs, args.users, args.cancel_ratio, args.fail_ratio)
        faults = FaultInjector(stack, random.Random(rng.random()), 0 if args.no_faults else args.jobs,
                               tuple(args.fault_interval))
        if args.no_faults:
            faults.plan = []
        armed: collections.Counter = collections.Counter()
        armed_lock = threading.Lock()
        push_started = time.monotonic()
        faults.start()
        records: list[JobRecord] = []
        with ThreadPoolExecutor(args.concurrency, thread_name_prefix="app") as pool:
            futures = [pool.submit(run_job, app, stack, s, armed, armed_lock, 60.0) for s in specs]
            for k, fut in enumerate(futures):
                try:
                    records.append(fut.result())
                except Exception as e:  # a bug in the soak itself: keep going, report it
                    rec = JobRecord(specs[k])
                    rec.problem = f"app thread crashed: {e!r}"
                    records.append(rec)
                if (k + 1) % 100 == 0:
                    say(f"soak: {k + 1}/{len(specs)} jobs done ({time.monotonic() - push_started:.0f}s, "
                        f"faults so far: {sum(faults.counts.values())})")
        push_s = time.monotonic() - push_started
        faults.stop()
        for fake in stack.fakes:  # nothing lingering: the drain runs fault-free
            fake.go_silent(False)
            fake.delay_history(0)
            fake.slow_view(0)
        stack.start_listener("listener")
        say(f"soak: pushed in {push_s:.1f}s; faults: {faults.summary()}; draining")

        drain_started = time.monotonic()
        conn = connect(stack.db_url)
        try:
            while True:
                active = query(conn, "SELECT COUNT(*) AS n FROM jobs WHERE status IN ('submitting','queued','running')")
                if active[0]["n"] == 0 or time.monotonic() - drain_started > args.timeout:
                    break
                time.sleep(0.5)
        finally:
            conn.close()
        time.sleep(3.0)  # anything late (a second finalize, a stray resubmission) shows up before the checks
        drain_s = time.monotonic() - drain_started

        checker = Checker(stack, app, records, faults, armed)
        checker.run()
        c = checker.counts
        statuses = collections.Counter(r["status"] for r in checker.jobs.values() if r["id"] in checker.known)
        print(f"jobs={args.jobs} succeeded={statuses['succeeded']} failed={statuses['failed']} "
              f"cancelled={statuses['cancelled']} " + " ".join(f"{k}={c[k]}" for k in SUMMARY_KEYS), flush=True)
        total_s = time.monotonic() - started
        print(f"faults: {faults.summary()} duration={total_s:.1f}s (push {push_s:.1f}s, drain {drain_s:.1f}s)")
        codes = " ".join(f"{k}={v}" for k, v in sorted(checker.error_codes.items())) or "none"
        consumed = sum(1 for runs in list(stack.recorder.runs.values()) for r in runs
                       if r.outcome == "execution_error" and DELIBERATE in (r.error or ""))
        print(f"failed by error code: {codes} (deliberate failures armed={sum(armed.values())} ran={consumed})")
        cancels = collections.Counter(
            f"{r.cancel}->{checker.jobs[r.job_id]['status'] if r.job_id in checker.jobs else None}"
            for r in records if r.spec.cancel_after is not None)
        print("cancel requests (answer->final status): "
              + " ".join(f"{k}={v}" for k, v in sorted(cancels.items(), key=str)))
        print("checks: " + " ".join(f"{k}={c[k]}" for k in CHECK_KEYS)
              + f" resubmitted={checker.resubmitted} images_checked={c['images_checked']}")
        for line in checker.info[:10]:
            print(f"note: {line}")
        if faults.failed:
            print(f"note: {len(faults.failed)} fault(s) could not be injected: {faults.failed[:5]}")
        logs = stack.listener_logs()
        tracebacks = logs.count("Traceback")
        if tracebacks:
            print(f"note: {tracebacks} traceback(s) in the listener logs")
        ok = all(c[k] == 0 for k in SUMMARY_KEYS + CHECK_KEYS)
        if not ok:
            print("\nFAILED invariants; evidence per job:")
            api_log = (workdir / "api.log").read_text(errors="replace") if (workdir / "api.log").exists() else ""
            shown = 0
            for job_id in checker.problems:
                if shown >= 25:
                    print(f"... and {len(checker.problems) - shown} more")
                    break
                print(checker.evidence(job_id, logs + "\n" + api_log))
                shown += 1
            print(f"logs kept in {workdir}")
        return 0 if ok else 1
    finally:
        stack.stop(keep_db=args.keep or not ok)
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif stack.db_name:
            say(f"soak: kept database {stack.db_name} and logs in {workdir}")


if __name__ == "__main__":
    sys.exit(main())
