"""Soak: nothing lost, nothing doubled, nothing stuck — under random faults, on real parts, on a pool.

    .venv/bin/python bench/soak.py [--jobs 500] [--seed N] [--users 8] [--concurrency 12] [--timeout 240]
                                   [--database-url mysql://root:@127.0.0.1:3306/any] [--keep]

What runs (all on loopback):

* its own database ``gw_soak_<hex>`` on ``--database-url`` / TEST_DATABASE_URL / DATABASE_URL's server,
  else the MariaDB at 127.0.0.1:3306 (root, no password), else a private server
  (shared.localdb); migrated with shared.migrate and dropped at the end (``--keep`` keeps it);
* a pool of three fake ComfyUI servers (tests/fakes/comfyui.py) that offer different things:
  A has checkpoint X, B has X and Y, C has Y and a custom node class; s3rver as object
  storage; ``gateway serve`` and ``gateway listen`` as subprocesses (tests/stack.py), with
  the soak's own WORKFLOWS_DIR (the shipped workflows plus ``soak_sharpen``, txt2img through
  the custom class, which only C can run);
* ``--jobs`` small jobs from ``--users`` dev users over real HTTP, at most ``--concurrency``
  in flight: txt2img on checkpoint X or Y (the ``checkpoint`` param, given or left to its
  default) and ``soak_sharpen``. Each app submits with an Idempotency-Key, retries what the
  contract says to retry, polls until final; some jobs are made to fail (the fake's
  ``fail_next``), some are cancelled (``POST /v1/jobs/{id}/cancel``);
* meanwhile a fault thread injects a bounded number of random faults: dropped sockets,
  silent sockets, ComfyUI restarts (with and without its output files), late history,
  failing and slow /view, 5xx/HTML answers on /history, /view and /prompt, ``kill -9`` of
  the listener (restarted after a pause), a second listener for a while, partitions (a server
  refuses connections for a few seconds but keeps running what it holds) and drains
  (``gateway backends drain URL``, then ``resume URL`` a few seconds later). The first round
  injects every kind once, so each soak has at least one restart (the first is long enough
  for the listener to see the server gone), one drain and one kill -9.

Then faults stop, every job is waited for (``--timeout`` bounds that wait) and the
invariants are checked against MySQL, the fakes and storage:

* lost: every job id an app received exists;
* stuck: no job is left submitting/queued/running;
* duplicate_outputs: no (job, node, index) twice, no succeeded job with more outputs
  than the history of the run it was finished from lists, no failed/cancelled job with outputs
  (a job that ran to the end on two servers has one run's outputs, never both);
* duplicate_usage: exactly one usage record per final job, none for anything else;
* image_mismatches: every image a succeeded job lists (fetched through
  ``GET /v1/jobs/{id}/result`` and its signed URL) has exactly the bytes ComfyUI
  saved in the run that counts (the last successful run, on the server the job ended
  on), and none is missing. A restart wipes the fake's history and files, so the
  expected bytes are captured inside each fake's event loop the moment it reports an
  output node (a hook on the fake's ``_report_ui``), per run;
* and (the ``checks:`` line): a prompt id POSTed again only after the server that held
  it lost it (a restart of that server, seen in the fake's generation, or a partition of it,
  between the two POSTs; the next POST may go to another server), and the copy a partitioned
  server kept taken off it once it can be reached again (``ghost_prompts``); a job failed
  ``backend_lost`` only after LOST_JOB_RETRIES + 1 of its runs started; no second job row for
  one app request; usage records that agree with their job; every failure and cancellation
  explained by an injected fault or a deliberate failure; nothing left in a fake's queue; no prompt
  reached a drained server while it was drained except what it held when the drain
  was committed (``drain_violations``: the jobs claimed for it, read right after the
  drain command, may still be POSTed once; any other POST there in the window is one);
  and ``refused``: the prompts a fake refused (400 for a node class or a value it lacks),
  which must be 0 — the gateway never sends a job where it cannot run.

It prints exactly one summary line
``jobs=N succeeded=… failed=… cancelled=… lost=0 stuck=0 duplicate_outputs=0 duplicate_usage=0 image_mismatches=0``,
then the faults injected and the duration, the failures by error code and the
other checks (``checks: … refused=0 …``), the POSTs per server and each drain; a
rejected submit is shown with the state of the pool then (sampled from the backend rows every
0.2 s) and the faults just before. It exits 1 when an invariant fails (with the evidence: rows, fake
runs and log lines of each offending job; the logs are kept), 2 when the set-up fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pymysql  # noqa: E402
import requests  # noqa: E402

from shared.config import Config, DatabaseUrl  # noqa: E402
from shared.db import connect, query  # noqa: E402
from shared.labels import label_bytes  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from tests.s3server import S3rverUnavailable, start_s3rver  # noqa: E402
from tests.stack import config_env, database_server, start_api, start_listener  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("submitting", "queued", "running")
DELIBERATE = "soak: deliberate failure"
PROMPTS = ("a cat", "a lighthouse at dusk", "a bowl of ramen", "a red bicycle", "mountains in fog")

# The pool: three servers that offer different things. txt2img on X runs on A or B, on Y on B or C;
# soak_sharpen (txt2img through the custom class, on Y) only on C.
CKPT_X = "v1-5-pruned-emaonly.safetensors"  # txt2img's default
CKPT_Y = "sd_xl_base_1.0.safetensors"
EXTRA_NODE = "SoakSharpen"
CUSTOM_WORKFLOW = "soak_sharpen"
FAKES = (
    ("A", {"checkpoints": (CKPT_X,)}),
    ("B", {"checkpoints": (CKPT_X, CKPT_Y)}),
    ("C", {"checkpoints": (CKPT_Y,), "extra_nodes": (EXTRA_NODE,)}),
)

LOST_JOB_RETRIES = 1

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
    # The pool's rules the checks rely on (the defaults, spelled out).
    "COMFYUI_SLOTS": "2",
    "LOST_JOB_RETRIES": str(LOST_JOB_RETRIES),
    "DISPATCH_SWEEP_S": "1",
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


class Post(NamedTuple):
    """One accepted POST /prompt: on which fake, in which of its generations, when, under which number."""

    fake: int
    generation: int
    at: float
    number: float


class Recorder:
    """Hooks on each fake's loop: every run's saved bytes and outcome, every submission's generation and
    time, the end of every generation (a restart).

    Uses the fake's internals (``_server``, ``_report_ui``, ``_add_message``, ``go_down``,
    ``prompts_log``, ``generation``); ``install`` fails loudly if they change.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.runs: dict[str, list[FakeRun]] = collections.defaultdict(list)
        self.fakes: list[FakeComfy] = []
        self.generation_ends: list[list[float]] = []  # per fake: wall time generation g ended, at index g

    def install(self, fake: FakeComfy) -> None:
        index = len(self.fakes)
        self.fakes.append(fake)
        ends: list[float] = []
        self.generation_ends.append(ends)
        server = fake._server
        for name in ("_report_ui", "_add_message", "go_down", "prompts_log", "generation", "files"):
            if not hasattr(server, name):
                raise RuntimeError(f"the fake ComfyUI has no {name!r} any more: update bench/soak.py's Recorder")
        original_report, original_message, original_go_down = server._report_ui, server._add_message, server.go_down
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

        async def go_down(*args, **kwargs):
            # On the loop, like POST /prompt: every submission of generation g is older than ends[g].
            with recorder.lock:
                ends.append(time.time())
            return await original_go_down(*args, **kwargs)

        class GenerationLog(list):
            """prompts_log whose entries also say in which generation (restart count) and when they arrived."""

            def append(self, item):
                item["generation"] = server.generation
                item["time"] = time.time()
                list.append(self, item)

        def install_hooks(s):
            s._report_ui = report_ui
            s._add_message = add_message
            s.go_down = go_down
            s.prompts_log = GenerationLog(s.prompts_log)

        fake._call(install_hooks)

    def runs_of(self, prompt_id: str) -> list[FakeRun]:
        with self.lock:
            return list(self.runs.get(prompt_id, ()))

    def submissions(self) -> dict[str, list[Post]]:
        """prompt_id -> every accepted POST /prompt of it, oldest first."""
        out: dict[str, list[Post]] = collections.defaultdict(list)
        for index, fake in enumerate(self.fakes):
            for pid, gen, at, number in fake._call(lambda s: [(p["prompt_id"], p.get("generation"), p.get("time"),
                                                               p.get("number")) for p in s.prompts_log]):
                out[pid].append(Post(index, gen, at, number))
        for posts in out.values():
            posts.sort(key=lambda post: post.at)
        return out

    def generation_end(self, index: int, generation: int) -> float | None:
        """When a fake's generation ended (the restart that made it forget its queue and history)."""
        with self.lock:
            ends = self.generation_ends[index]
            return ends[generation] if generation < len(ends) else None

    def refusals(self) -> list[tuple[int, str, str]]:
        """(fake index, prompt_id, reason) of every prompt a fake refused for a class or value it lacks."""
        return [(index, pid, why) for index, fake in enumerate(self.fakes) for pid, why in fake.refusal_log]

    def generation(self, index: int) -> int:
        return self.fakes[index]._call(lambda s: s.generation)

    def leftovers(self, index: int) -> list[str]:
        """Prompt ids still queued or running on a fake."""
        return self.fakes[index]._call(
            lambda s: [i.prompt_id for i in s.pending] + ([s.running.prompt_id] if s.running else []))


# ======================================================================================
# The stack
# ======================================================================================

def write_workflows(folder: Path) -> Path:
    """The soak's WORKFLOWS_DIR: the shipped workflows, and soak_sharpen (txt2img through EXTRA_NODE, on Y)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "workflows").glob("*.json")):
        shutil.copyfile(path, folder / path.name)
    spec = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph = spec["graph"]
    decoded = next(n for n, node in graph.items() if node["class_type"] == "VAEDecode")
    save = next(n for n, node in graph.items() if node["class_type"] == "SaveImage")
    sharpen = str(max(int(n) for n in graph) + 1)
    graph[sharpen] = {"inputs": {"image": [decoded, 0]}, "class_type": EXTRA_NODE, "_meta": {"title": "Sharpen"}}
    graph[save]["inputs"]["images"] = [sharpen, 0]
    ckpt = next(p for p in spec["params"].values() if p.get("enum_from") == "CheckpointLoaderSimple.ckpt_name")
    ckpt["default"] = CKPT_Y
    graph[ckpt["node"]]["inputs"][ckpt["input"]] = CKPT_Y
    spec["title"] = "Text to image, sharpened (soak)"
    spec["description"] = f"txt2img through the custom node class {EXTRA_NODE}: only one server of the pool has it."
    (folder / f"{CUSTOM_WORKFLOW}.json").write_text(json.dumps(spec, indent=2))
    return folder


class PoolWatch(threading.Thread):
    """Samples the backend rows every 0.2 s: which servers took new jobs when (evidence for the checks)."""

    def __init__(self, db_url: DatabaseUrl, urls: list[str]):
        super().__init__(name="pool watch", daemon=True)
        self.db_url = db_url
        self.names = {url: name for (name, _), url in zip(FAKES, urls)}
        self.samples: list[tuple[float, str]] = []  # (wall time, "A B(draining) C(down)")
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.stop_event.wait(0.2):
            try:
                conn = conn or connect(self.db_url)
                rows = query(conn, """SELECT url, state, capabilities_hash IS NOT NULL AS known,
                                        connected=1 AND client_id IS NOT NULL AND lease_until > UTC_TIMESTAMP(3) AS live
                                      FROM backends""")
            except Exception:
                conn = None
                continue
            states = []
            for r in sorted(rows, key=lambda r: self.names.get(r["url"], r["url"])):
                why = [w for w, bad in (("down", not r["live"]), ("draining", r["state"] == "draining"),
                                        ("no capabilities", not r["known"])) if bad]
                states.append(self.names.get(r["url"], r["url"]) + (f"({', '.join(why)})" if why else ""))
            text = " ".join(states)
            if not self.samples or self.samples[-1][1] != text:
                self.samples.append((time.time(), text))
        if conn is not None:
            conn.close()

    def serving_at(self, wall: float) -> str:
        """The pool as last sampled before ``wall``, and the change after it if one came within a second."""
        before = [s for s in self.samples if s[0] <= wall]
        after = [s for s in self.samples if wall < s[0] <= wall + 1.0]
        text = before[-1][1] if before else "?"
        return text + (f"; from +{after[0][0] - wall:.2f}s: {after[0][1]}" if after else "")

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


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
        self.watch: PoolWatch | None = None

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

        for _, offers in FAKES:
            fake = FakeComfy(step_delay=self.args.step_delay, **offers)
            fake.start()
            self.recorder.install(fake)
            self.fakes.append(fake)
        workflows_dir = write_workflows(self.workdir / "workflows")

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
            "WORKFLOWS_DIR": str(workflows_dir),
            **LIMITS_OFF,
            **STACK_ENV,
        }
        self.cfg = Config.from_env(env)
        self.start_listener("listener")
        self.api, self.base = start_api(self.cfg, self.workdir)
        deadline = time.monotonic() + 30
        while not self.all_connected():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the listener never connected to every fake and read what it offers; see "
                                   f"{self.workdir / 'listener.log'}")
            time.sleep(0.1)
        self.watch = PoolWatch(self.db_url, [f.base_url for f in self.fakes])
        self.watch.start()

    def all_connected(self) -> bool:
        """Every fake connected (/healthz) and its capabilities stored (jobs can be routed to it)."""
        try:
            body = requests.get(self.base + "/healthz", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        if len(body.get("backends", [])) != len(self.fakes) or not all(b["listener_connected"]
                                                                        for b in body["backends"]):
            return False
        conn = connect(self.db_url)
        try:
            rows = query(conn, "SELECT url FROM backends WHERE capabilities_hash IS NOT NULL")
        finally:
            conn.close()
        return {r["url"] for r in rows} >= {f.base_url for f in self.fakes}

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

    # -- operators ------------------------------------------------------------------------
    def backends_command(self, *args: str) -> None:
        """Run ``gateway backends ...`` as an operator does, with the stack's configuration."""
        out = subprocess.run([sys.executable, "-m", "shared.cli", "backends", *args],
                             env={**os.environ, **config_env(self.cfg)}, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"gateway backends {' '.join(args)} exited {out.returncode}: "
                               f"{(out.stdout + out.stderr).strip()[-300:]}")

    def held_by(self, url: str) -> dict[str, str]:
        """job id -> status of the jobs a server holds now (claimed for it and not final)."""
        conn = connect(self.db_url)
        try:
            rows = query(conn, "SELECT j.id, j.status FROM jobs j JOIN backends b ON b.id=j.backend_id "
                               "WHERE b.url=%s AND j.status IN ('submitting','queued','running')", (url,))
        finally:
            conn.close()
        return {r["id"]: r["status"] for r in rows}

    # -- teardown -------------------------------------------------------------------------
    def stop(self, keep_db: bool) -> None:
        steps = [lambda: self.watch and self.watch.stop(), lambda: self.api and self.api.stop()]
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
    "drain": (1, 2),
    "partition": (1, 2),
}
DRAIN_S = (3.0, 8.0)  # how long a server stays drained
PARTITION_S = (2.0, 5.0)  # how long a server cannot be reached (it keeps running what it holds)
STALE_GRACE_S = 5.0  # a stale copy left on a server that is reachable again is taken off within this
# A restart is short (the listener may only see a dropped socket) or long (it sees the server gone and
# sends what it held elsewhere at once); the first one is long.
RESTART_SHORT_S, RESTART_LONG_S, RESTART_LONG_SHARE = (0.2, 1.5), (2.5, 5.0), 0.3


@dataclass
class Drain:
    """One `gateway backends drain URL` ... `resume URL`, with what the server held when it took effect."""

    fake: int
    url: str
    asked: float  # wall times: drain command started, returned (committed before), held read
    done: float
    held_at: float
    held: dict  # job id -> status (submitting: claimed, its POST may still come) right after the drain
    lasting: float
    resume_asked: float | None = None  # the window ends when the resume command starts
    resumed: float | None = None


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
        self.drains: list[Drain] = []
        self.partitions: list[list] = []  # [fake, wall from, wall until] (until: inf while it lasts)
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
        name = FAKES[i][0]
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
                up = [k for k in range(len(stack.fakes)) if self.down_until[k] <= now]
                if not up:
                    return
                i = rng.choice(up)
                fake, name = stack.fakes[i], FAKES[i][0]
            long = not self.restarts or rng.random() < RESTART_LONG_SHARE
            downtime = rng.uniform(*(RESTART_LONG_S if long else RESTART_SHORT_S))
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
        elif kind == "partition":
            # The server is cut off (connections refused, sockets dropped) but keeps running what it holds:
            # the listener sends that elsewhere, and takes the stale copies off when it can reach it again.
            now = time.monotonic()
            cut = {f for f, _, until in self.partitions if until == float("inf")}
            free = [k for k in range(len(stack.fakes)) if self.down_until[k] <= now and k not in cut]
            if not free:
                return
            if i not in free:
                i = rng.choice(free)
                fake, name = stack.fakes[i], FAKES[i][0]
            seconds = rng.uniform(*PARTITION_S)
            window = [i, time.time(), float("inf")]
            fake.reject_connections(True)
            fake.drop_sockets()
            self.partitions.append(window)

            def heal(fake=fake, window=window):
                fake.reject_connections(False)
                window[2] = time.time()
            self._later(seconds, f"heal {name}", heal)
            self._note(kind, i, f"for {seconds:.1f}s")
        elif kind == "drain":
            if any(d.resumed is None for d in self.drains):
                return  # one server drained at a time: every job keeps a server that can run it
            lasting = rng.uniform(*DRAIN_S)
            asked = time.time()
            stack.backends_command("drain", fake.base_url)
            done = time.time()
            held = stack.held_by(fake.base_url)
            drain = Drain(fake=i, url=fake.base_url, asked=asked, done=done, held_at=time.time(), held=held,
                          lasting=lasting)
            self.drains.append(drain)
            self._later(lasting, f"resume {name}", lambda: self._resume(drain))
            self._note(kind, i, f"for {lasting:.1f}s, holding {len(held)}")
        else:
            raise ValueError(kind)

    def _resume(self, drain: Drain) -> None:
        drain.resume_asked = time.time()
        self.stack.backends_command("resume", drain.url)
        drain.resumed = time.time()

    def restarted_during(self, fake: int, start: float, end: float) -> bool:
        return any(f == fake and s <= end + 1 and u >= start - 1 for f, s, u in self.restarts)

    def cut_off_during(self, fake: int, start: float, end: float) -> bool:
        """Whether the server could not be reached (partition) at some time between start and end."""
        return any(f == fake and s <= end and u >= start for f, s, u in self.partitions)

    def healed_after(self, fake: int, start: float, end: float) -> float | None:
        """When the first partition of the server between start and end ended (None: none, or never)."""
        ends = [u for f, s, u in self.partitions if f == fake and s <= end and u >= start]
        return min(ends) if ends and min(ends) != float("inf") else None

    def summary(self) -> str:
        return " ".join(f"{k}={self.counts[k]}" for k in FAULTS) + f" total={sum(self.counts.values())}"


# ======================================================================================
# The apps
# ======================================================================================

@dataclass
class JobSpec:
    n: int
    user: int
    workflow: str
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
    problem_at: float | None = None  # wall time of the answer that made the problem


def make_specs(rng: random.Random, n: int, users: int, cancel_ratio: float, fail_ratio: float) -> list[JobSpec]:
    """The jobs: 40% txt2img on X (A or B), 40% txt2img on Y (B or C), 20% soak_sharpen (C only);
    the checkpoint is given or left to the workflow's default, half and half."""
    specs = []
    for k in range(n):
        params = {"prompt": rng.choice(PROMPTS), "width": rng.choice((64, 64, 72, 80)),
                  "height": rng.choice((64, 64, 72)), "steps": rng.randint(2, 6),
                  "batch_size": rng.choice((1, 1, 2)), "seed": rng.randrange(2 ** 32)}
        mix = rng.random()
        workflow, default, ckpt = (CUSTOM_WORKFLOW, CKPT_Y, CKPT_Y) if mix < 0.2 else \
            ("txt2img", CKPT_X, CKPT_X if mix < 0.6 else CKPT_Y)
        if ckpt != default or rng.random() < 0.5:
            params["checkpoint"] = ckpt
        if specs and rng.random() < 0.03:
            same = rng.choice(specs)  # the same request again: ComfyUI's cache may answer
            workflow, params = same.workflow, dict(same.params)
        cancel_after = rng.uniform(0.0, 0.6) if rng.random() < cancel_ratio else None
        fail_fake = rng.randrange(len(FAKES)) if cancel_after is None and rng.random() < fail_ratio else None
        specs.append(JobSpec(n=k, user=k % users, workflow=workflow, params=params, cancel_after=cancel_after,
                             fail_fake=fail_fake, fail_step=rng.randint(1, params["steps"]),
                             key=f"soak-{k}-{uuid.uuid4().hex[:8]}"))
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
    body = {"workflow": spec.workflow, "params": spec.params}
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
                rec.problem, rec.problem_at = f"submit answered {r.status_code}: {r.text[:300]}", time.time()
                return rec
        except requests.RequestException as e:
            rec.submit_statuses.append(type(e).__name__)
        if time.monotonic() + delay > deadline:
            rec.problem = f"submit abandoned after {rec.submit_tries} tries: {rec.submit_statuses[-5:]}"
            rec.problem_at = time.time()
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
                rec.problem, rec.problem_at = f"status answered {r.status_code}: {r.text[:300]}", time.time()
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
                 armed: collections.Counter, t0: float):
        self.stack = stack
        self.app = app
        self.records = records
        self.faults = faults
        self.armed = armed
        self.problems: dict[str, list[str]] = collections.defaultdict(list)  # job id -> why
        self.counts = collections.Counter()
        self.info: list[str] = []
        self.t0 = t0

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
        self.check_drains()
        self.check_refusals()
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
                self.flag("submit_abandoned", None, f"request {rec.spec.n} ({rec.spec.workflow}, checkpoint "
                                                    f"{rec.spec.params.get('checkpoint', 'default')}): "
                                                    f"{rec.problem}{self.when(rec.problem_at)}")
            elif rec.problem:
                self.flag("api_errors", rec.job_id, f"{rec.problem}{self.when(rec.problem_at)}")
        for job_id, row in self.jobs.items():
            if job_id not in self.known:
                self.flag("extra_jobs", job_id, f"a row no app request got back (status {row['status']}, "
                                                f"key {row['idempotency_key']})")
            if row["status"] in ACTIVE:
                self.flag("stuck", job_id, f"still {row['status']}")

    # -- outputs ------------------------------------------------------------------------
    def expected_runs(self, job_id: str) -> list[FakeRun]:
        return [r for r in self.stack.recorder.runs_of(job_id) if r.outcome == "execution_success"]

    def final_run(self, job_id: str) -> FakeRun | None:
        """The run whose outputs count: the last one to succeed on the server the job ended on."""
        row = self.jobs.get(job_id)
        fake = self.stack.fake_index(self.backends.get(row["backend_id"], "")) if row else -1
        runs = [r for r in self.expected_runs(job_id) if r.fake == fake]
        return max(runs, key=lambda r: (r.generation, r.ended or 0.0)) if runs else None

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
            run = self.final_run(job_id)
            if run is not None and len(outs) > len(run.saved()):
                self.flag("duplicate_outputs", job_id,
                          f"{len(outs)} outputs, the history of the run that counts ({FAKES[run.fake][0]} generation "
                          f"{run.generation}) lists {len(run.saved())}", len(outs) - len(run.saved()))

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
        """A prompt id is POSTed again only once the server that held it lost it: that server restarted
        (its generation ended) or was cut off between the two POSTs. The next POST may be on any server;
        the copy a cut-off server kept must not start long after it can be reached again."""
        self.resubmitted = self.moved = self.ran_twice = 0
        recorder = self.stack.recorder
        for job_id, subs in self.submissions.items():
            row = self.jobs.get(job_id)
            ran = [r for r in recorder.runs_of(job_id) if r.outcome == "execution_success"]
            if row is None:
                if ran:
                    self.flag("orphan_runs", job_id, f"ComfyUI ran prompt {job_id} to success {len(ran)} time(s) "
                                                     f"but no job row has that id (submissions {self.fmt(subs)})")
                else:
                    self.info.append(f"prompt {job_id} reached a fake without a job row (never ran to the end): "
                                     f"{self.fmt(subs)}")
                continue
            if len(subs) > 1:
                self.resubmitted += 1
                self.moved += len({post.fake for post in subs}) > 1
            if len({(r.fake, r.generation) for r in ran}) > 1:
                self.ran_twice += 1
            for (f0, g0, t0, n0), (f1, g1, t1, _) in zip(subs, subs[1:]):
                lost_at = recorder.generation_end(f0, g0)
                if lost_at is not None and lost_at <= t1:
                    continue  # the restart took it from that server
                if not self.faults.cut_off_during(f0, t0, t1):
                    self.flag("over_submitted", job_id,
                              f"POSTed to {FAKES[f1][0]} (generation {g1}) at {self.t(t1)} while {FAKES[f0][0]} "
                              f"still had it (POSTed there at {self.t(t0)}, generation {g0}, not cut off since, "
                              + ("never restarted after)" if lost_at is None else
                                 f"restarted only at {self.t(lost_at)})"))
                    continue
                # Cut off, not restarted: the copy it kept must be taken off once it can be reached again.
                healed = self.faults.healed_after(f0, t0, t1)
                late = [r for r in recorder.runs_of(job_id) if (r.fake, r.generation, r.number) == (f0, g0, n0)
                        and r.started is not None and healed is not None and r.started > healed + STALE_GRACE_S]
                if late:
                    self.flag("ghost_prompts", job_id,
                              f"its stale copy on {FAKES[f0][0]} started at {self.t(late[0].started)}, "
                              f"{late[0].started - healed:.1f}s after {FAKES[f0][0]} could be reached again "
                              f"(it had been sent to {FAKES[f1][0]} at {self.t(t1)})")
            if len(subs) > row["submit_attempts"]:
                self.flag("over_submitted", job_id, f"{len(subs)} submissions but submit_attempts="
                                                    f"{row['submit_attempts']}: {self.fmt(subs)}")

    def check_drains(self) -> None:
        """While a server was drained, only what it held when the drain took effect reached it (once each)."""
        self.drain_notes = []
        for d in self.faults.drains:
            name = FAKES[d.fake][0]
            end = d.resume_asked if d.resume_asked is not None else float("inf")
            claimed = {job_id for job_id, status in d.held.items() if status == "submitting"}
            posted, elsewhere = collections.Counter(), 0
            for job_id, subs in self.submissions.items():
                for post in subs:
                    if d.held_at <= post.at <= end:
                        if post.fake == d.fake:
                            posted[job_id] += 1
                        else:
                            elsewhere += 1
            for job_id, n in posted.items():
                if job_id not in claimed:
                    held = d.held.get(job_id)
                    self.flag("drain_violations", job_id,
                              f"POSTed to {name} while it was drained ({self.t(d.held_at)} to {self.t(end)}); it "
                              + (f"was already {held} there when the drain took effect" if held else
                                 "was not held there when the drain took effect"))
                elif n > 1:
                    self.flag("drain_violations", job_id, f"POSTed {n} times to {name} while it was drained")
            self.drain_notes.append(f"{name} drained {self.t(d.done)}..{self.t(end)}: held {len(d.held)} "
                                    f"({len(claimed)} not yet sent), {sum(posted.values())} POST(s) there, "
                                    f"{elsewhere} elsewhere")

    def check_refusals(self) -> None:
        for fake, prompt_id, why in self.stack.recorder.refusals():
            self.flag("refused", prompt_id, f"{FAKES[fake][0]} refused the prompt (400): {why}")

    def when(self, wall: float | None) -> str:
        """`` at +12.34s (serving then: A B(draining) C(down); faults …)``: a time, the pool then, the faults before."""
        if wall is None:
            return ""
        recent = [f"{self.t(at)} {kind}{' ' + FAKES[f][0] if f is not None else ''}{' ' + detail if detail else ''}"
                  for at, kind, f, detail in self.faults.events if wall - 8 <= at <= wall]
        return (f" at {self.t(wall)} (serving then: {self.stack.watch.serving_at(wall)}"
                + (f"; faults in the 8s before: {'; '.join(recent[-4:])}" if recent else "") + ")")

    def t(self, wall: float) -> str:
        """A wall time as seconds since the soak's jobs started (how the evidence shows times)."""
        return f"+{wall - self.t0:.2f}s"

    def fmt(self, subs) -> str:
        return "[" + ", ".join(f"{FAKES[p.fake][0]} gen {p.generation} #{p.number:g} at {self.t(p.at)}"
                               for p in subs) + "]"

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
                    # Lost while running more often than LOST_JOB_RETRIES allows: as many runs started
                    # (one on each server that lost it), the last on a server that went away.
                    started = [r for r in runs if r.started is not None]
                    gone = restarted or self.faults.cut_off_during(fake, start, end)
                    ok = gone and len(started) > LOST_JOB_RETRIES
                    why = (f"only {len(started)} run(s) of it started, yet LOST_JOB_RETRIES={LOST_JOB_RETRIES} "
                           f"should have run it again" if gone else
                           "its ComfyUI server neither restarted nor was cut off while it was active")
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
        run = self.final_run(job_id)
        if run is None:
            where = self.backends.get(self.jobs[job_id]["backend_id"])
            return job_id, problems + [(max(1, len(images)), f"succeeded on {where}, but that server never ran it "
                                                              f"to success (runs elsewhere: "
                                                              f"{len(self.expected_runs(job_id))})")], len(images)
        expected = run.saved()
        missing = [(n, i) for n, i, b in expected if got.get((n, i)) is None]
        # Stored images carry the AI-content label and not ComfyUI's graph (shared/labels.py).
        expected = [(n, i, label_bytes(b, job_id=job_id, provider="comfy-gateway")) for n, i, b in expected]
        differ = [(n, i) for n, i, b in expected if got.get((n, i)) is not None and got[(n, i)] != b]
        if missing:
            problems.append((len(missing), f"image(s) {missing} of the run that counts ({FAKES[run.fake][0]}, "
                                           f"generation {run.generation}) are missing from the result"))
        if differ:
            problems.append((len(differ), f"image(s) {differ} differ from what {FAKES[run.fake][0]} saved "
                                          f"(generation {run.generation})"))
        return job_id, problems, len(images)

    def check_fakes_idle(self) -> None:
        for i in range(len(self.stack.fakes)):
            for pid in self.stack.recorder.leftovers(i):
                self.flag("ghost_prompts", pid, f"still queued/running on {FAKES[i][0]} after every job is final")

    # -- reporting -------------------------------------------------------------------------
    def evidence(self, job_id: str, logs: str) -> str:
        lines = [f"job {job_id}:"]
        for why in self.problems.get(job_id, []):
            lines.append(f"  - {why}")
        row = self.jobs.get(job_id)
        if row:
            keep = ("status", "error_code", "error_message", "submit_attempts", "lost_retries", "client_id",
                    "cancel_requested", "number", "created_at", "submitted_at", "started_at", "finished_at")
            where = self.stack.fake_index(self.backends.get(row["backend_id"], ""))
            lines.append(f"  row: backend={FAKES[where][0] if where >= 0 else row['backend_id']}, "
                         + ", ".join(f"{k}={row[k]}" for k in keep))
        rec = self.known.get(job_id)
        if rec:
            lines.append(f"  app: request {rec.spec.n}, {rec.spec.workflow} {rec.spec.params}, cancel={rec.cancel}, "
                         f"deliberate_failure={rec.spec.fail_fake is not None}, last status "
                         f"{(rec.last or {}).get('status')}")
        lines.append(f"  submissions: {self.fmt(self.submissions.get(job_id, []))}")
        for run in self.stack.recorder.runs_of(job_id):
            lines.append(f"  fake run: {FAKES[run.fake][0]} gen {run.generation} number {run.number} "
                         f"{self.t(run.started) if run.started else '-'}..{self.t(run.ended) if run.ended else '-'} "
                         f"outcome {run.outcome} images {[(n, i, len(b or b'')) for n, i, b in run.saved()]}")
        if row:
            born = row["created_at"].replace(tzinfo=timezone.utc).timestamp()
            died = (row["finished_at"] or now_utc()).replace(tzinfo=timezone.utc).timestamp()
            fakes = {post.fake for post in self.submissions.get(job_id, [])}
            seen = [f"{self.t(at)} {kind}{' ' + FAKES[f][0] if f is not None else ''}{' ' + detail if detail else ''}"
                    for at, kind, f, detail in self.faults.events
                    if born - 1 <= at <= died + 1 and (f is None or f in fakes)]
            if seen:
                lines.append(f"  faults meanwhile: {'; '.join(seen[:12])}")
        for d in self.faults.drains:
            if job_id in d.held:
                lines.append(f"  held ({d.held[job_id]}) by {FAKES[d.fake][0]} when it was drained at "
                             f"{self.t(d.done)}")
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
              "cancels_ignored", "ghost_prompts", "submit_abandoned", "api_errors", "drain_violations", "refused")


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
            f"{', '.join(f'{name} {f.base_url}' for (name, _), f in zip(FAKES, stack.fakes))}, "
            f"database {stack.db_name})")

        specs = make_specs(rng, args.jobs, args.users, args.cancel_ratio, args.fail_ratio)
        faults = FaultInjector(stack, random.Random(rng.random()), 0 if args.no_faults else args.jobs,
                               tuple(args.fault_interval))
        if args.no_faults:
            faults.plan = []
        armed: collections.Counter = collections.Counter()
        armed_lock = threading.Lock()
        push_started, push_wall = time.monotonic(), time.time()
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
        for fake in stack.fakes:  # nothing lingering: settling runs fault-free
            fake.go_silent(False)
            fake.delay_history(0)
            fake.slow_view(0)
        stack.start_listener("listener")
        say(f"soak: pushed in {push_s:.1f}s; faults: {faults.summary()}; settling")

        settle_started = time.monotonic()
        conn = connect(stack.db_url)
        try:
            while True:
                active = query(conn, "SELECT COUNT(*) AS n FROM jobs WHERE status IN ('submitting','queued','running')")
                if active[0]["n"] == 0 or time.monotonic() - settle_started > args.timeout:
                    break
                time.sleep(0.5)
        finally:
            conn.close()
        time.sleep(3.0)  # anything late (a second finalize, a stray resubmission) shows up before the checks
        settle_s = time.monotonic() - settle_started

        checker = Checker(stack, app, records, faults, armed, push_wall)
        checker.run()
        c = checker.counts
        statuses = collections.Counter(r["status"] for r in checker.jobs.values() if r["id"] in checker.known)
        print(f"jobs={args.jobs} succeeded={statuses['succeeded']} failed={statuses['failed']} "
              f"cancelled={statuses['cancelled']} " + " ".join(f"{k}={c[k]}" for k in SUMMARY_KEYS), flush=True)
        total_s = time.monotonic() - started
        print(f"faults: {faults.summary()} duration={total_s:.1f}s (push {push_s:.1f}s, settle {settle_s:.1f}s)")
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
              + f" resubmitted={checker.resubmitted} moved={checker.moved} ran_twice={checker.ran_twice}"
              f" images_checked={c['images_checked']}")
        print("pool: " + " ".join(
            f"{name}(posts={sum(1 for subs in checker.submissions.values() for p in subs if p.fake == i)}, "
            f"restarts={len(stack.recorder.generation_ends[i])})" for i, (name, _) in enumerate(FAKES)))
        for line in checker.drain_notes:
            print(f"drain: {line}")
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
