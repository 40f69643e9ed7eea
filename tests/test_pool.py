"""The pool of ComfyUI servers behind the gateway queue (issue 7), several fake servers per test.

The servers differ as real ones do (each test picks the ones it needs):

* ``sd15``: the workflows' default checkpoint (``v1-5-pruned-emaonly``);
* ``sdxl``: SDXL only;
* ``faces``: SD 1.5 and DreamShaper, plus a custom node class, ``FaceRestore``,
  that the test-only workflow ``restore`` uses (txt2img with FaceRestore between
  VAEDecode and SaveImage); ``upscale`` uses a class no server has.

The API runs in-process (the Flask door) against real listener threads, so jobs
really reach the fakes. Every test checks that no fake refused a prompt: the
gateway never sends a job where ComfyUI would refuse it.
"""

from __future__ import annotations

import collections
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from functions.app import create_app
from listener.connection import Listener
from shared import backends, cli
from shared.context import Context
from tests.fakes.comfyui import FakeComfy
from tests.listener.conftest import FAST
from tests.stack import config_env, sql, wait_for

ROOT = Path(__file__).resolve().parents[1]
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
DREAM = "dreamshaper_8.safetensors"
FINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("submitting", "queued", "running")


def serves(name: str, step_delay: float = 0.01) -> FakeComfy:
    """One of the servers described above, started."""
    kinds = {"sd15": dict(checkpoints=[SD15]), "sdxl": dict(checkpoints=[SDXL]),
             "both": dict(checkpoints=[SD15, SDXL]),
             "faces": dict(checkpoints=[SD15, DREAM], extra_nodes=["FaceRestore"])}
    fake = FakeComfy(step_delay, **kinds[name])
    fake.start()
    return fake


@pytest.fixture
def workflows_dir(tmp_path):
    """The shipped workflows plus `restore` (a custom node class) and `upscale` (a class nobody has)."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    for f in (ROOT / "workflows").glob("*.json"):
        shutil.copy(f, folder / f.name)
    for name, cls in (("restore", "FaceRestore"), ("upscale", "NoSuchUpscaler")):
        wf = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
        wf["title"] = f"Text to image through {cls}"
        wf["graph"]["10"] = {"inputs": {"image": ["8", 0]}, "class_type": cls, "_meta": {"title": cls}}
        wf["graph"]["9"]["inputs"]["images"] = ["10", 0]
        (folder / f"{name}.json").write_text(json.dumps(wf))
    return folder


class Pool:
    """Fake servers, an API context with its Flask client, listeners, and what tests ask of them."""

    def __init__(self, make_config, database_url, workflows_dir, fakes: dict[str, FakeComfy], env: dict):
        self.make_config = make_config
        self.database_url = database_url
        self.fakes = fakes
        self.urls = {name: f.base_url for name, f in fakes.items()}
        self.env = {**FAST, "COMFYUI_URLS": ",".join(self.urls.values()), "WORKFLOWS_DIR": str(workflows_dir),
                    "DISPATCH_SWEEP_S": "0.5", **env}
        self.contexts: list[Context] = []
        self.listeners: list[Listener] = []
        self.ctx = self.context()
        self.client = create_app(lambda: self.ctx).test_client()
        self._tokens: dict[str, str] = {}

    # -- processes --------------------------------------------------------------------------
    def context(self, **env) -> Context:
        """Another instance of the gateway (its own Context, connections and caches)."""
        ctx = Context(self.make_config(**{**self.env, **env}))
        self.contexts.append(ctx)
        return ctx

    def start_listener(self, ctx: Context | None = None, owner: str | None = None, wait: bool = True) -> Listener:
        listener = Listener(ctx or self.context(), owner=owner)
        listener.start()
        self.listeners.append(listener)
        if wait:
            self.wait_serving(*self.fakes)
        return listener

    def stop_listener(self, listener: Listener) -> None:
        listener.stop()
        self.listeners.remove(listener)

    def close(self) -> None:
        for listener in list(self.listeners):
            listener.stop()
        for fake in self.fakes.values():
            fake.stop()
        for ctx in self.contexts:
            ctx.db.close()

    # -- the database -----------------------------------------------------------------------
    def sql(self, text: str, args=None) -> list[dict]:
        return sql(self.database_url, text, args)

    def backend(self, name: str) -> dict:
        return self.sql("SELECT * FROM backends WHERE url=%s", (self.urls[name],))[0]

    def serving(self, name: str) -> bool:
        rows = self.sql("SELECT connected, capabilities_hash, state FROM backends WHERE url=%s", (self.urls[name],))
        return bool(rows and rows[0]["connected"] and rows[0]["capabilities_hash"] and rows[0]["state"] == "active")

    def wait_serving(self, *names: str, timeout: float = 20) -> None:
        for name in names:
            wait_for(lambda: self.serving(name), timeout, f"{name} never served (connected with capabilities)")

    def row(self, job_id: str) -> dict:
        return self.sql("SELECT * FROM jobs WHERE id=%s", (job_id,))[0]

    def server_of(self, job_id: str) -> str | None:
        """The name of the server that holds (or last held) a job, from its row."""
        rows = self.sql("SELECT b.url FROM jobs j JOIN backends b ON b.id=j.backend_id WHERE j.id=%s", (job_id,))
        by_url = {url: name for name, url in self.urls.items()}
        return by_url[rows[0]["url"]] if rows else None

    def landed(self, job_id: str) -> list[str]:
        """The servers whose POST /prompt received this job, once per time it was sent."""
        return [name for name, fake in self.fakes.items() for p in fake.prompts if p["prompt_id"] == job_id]

    def wait_final(self, job_ids, timeout: float = 30) -> dict[str, dict]:
        job_ids = list(job_ids)

        def done():
            rows = {r["id"]: r for r in self.sql(
                f"SELECT * FROM jobs WHERE id IN ({','.join(['%s'] * len(job_ids))})", job_ids)}
            return rows if all(rows[j]["status"] in FINAL for j in job_ids) else None
        return wait_for(done, timeout, f"not final: {[(j, self.row(j)['status']) for j in job_ids]}", interval=0.05)

    def refusals(self) -> dict[str, int]:
        return {name: fake.refusals for name, fake in self.fakes.items()}

    # -- the HTTP API -----------------------------------------------------------------------
    def headers(self, user: str) -> dict:
        if user not in self._tokens:
            r = self.client.post("/v1/auth/dev", json={"user": user})
            assert r.status_code == 200, r.get_data(as_text=True)
            self._tokens[user] = r.get_json()["token"]
        return {"Authorization": f"Bearer {self._tokens[user]}"}

    def post(self, user: str, workflow: str = "txt2img", client=None, **params):
        body = {"workflow": workflow, "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": 2,
                                                  **params}}
        return (client or self.client).post("/v1/jobs", json=body, headers=self.headers(user))

    def submit(self, user: str, workflow: str = "txt2img", client=None, **params) -> dict:
        r = self.post(user, workflow, client, **params)
        assert r.status_code == 202, r.get_data(as_text=True)
        return r.get_json()["job"]

    def status(self, user: str, job_id: str) -> dict:
        r = self.client.get(f"/v1/jobs/{job_id}", headers=self.headers(user))
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.get_json()["job"]

    def workflows(self, client=None) -> dict[str, dict]:
        r = (client or self.client).get("/v1/workflows", headers=self.headers("viewer"))
        assert r.status_code == 200, r.get_data(as_text=True)
        return {w["name"]: w for w in r.get_json()["workflows"]}

    def health(self, client=None) -> dict[str, dict]:
        r = (client or self.client).get("/healthz")
        assert r.status_code == 200, r.get_data(as_text=True)
        by_url = {url: name for name, url in self.urls.items()}
        return {by_url[b["url"]]: b for b in r.get_json()["backends"]}


@pytest.fixture
def pool(make_config, db_conn, database_url, workflows_dir):
    """``pool(sd15=fake, ...)`` -> a Pool over these started fakes (listeners are started by the test)."""
    with db_conn.cursor() as cur:  # tables the shared fixture does not empty
        cur.execute("DELETE FROM backend_listeners")
        cur.execute("DELETE FROM workflow_stats")
    made: list[Pool] = []
    started: list[FakeComfy] = []

    def make(env: dict | None = None, **fakes: FakeComfy) -> Pool:
        started.extend(fakes.values())
        p = Pool(make_config, database_url, workflows_dir, fakes, env or {})
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()
    for fake in started:
        fake.stop()


def gateway(p: Pool, monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run `gateway ...` in-process with the pool's configuration in the environment."""
    for key, value in config_env(p.ctx.config).items():
        monkeypatch.setenv(key, value)
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().out


def checkpoint_enum(workflow: dict) -> list[str]:
    return workflow["params"]["checkpoint"].get("enum")


# 1. /v1/workflows: the union of the connected servers' choices, and what can run ----------------------

def test_workflows_list_the_union_of_choices_and_what_some_server_can_run(pool):
    p = pool(sd15=serves("sd15"), sdxl=serves("sdxl"), faces=serves("faces"))
    p.start_listener()
    wfs = p.workflows()
    enum = checkpoint_enum(wfs["txt2img"])
    assert sorted(enum) == sorted([SD15, SDXL, DREAM])  # each once, though two servers offer SD 1.5
    assert sorted(checkpoint_enum(wfs["restore"])) == sorted([SD15, SDXL, DREAM])
    assert {name: w["available"] for name, w in wfs.items()} == {
        "txt2img": True, "img2img": True, "restore": True, "upscale": False}
    # Another instance (its own Context and caches) reads the same stored view: the same list.
    other = create_app(lambda: p.context()).test_client()
    assert p.workflows(other) == wfs

    # The only server with FaceRestore (and DreamShaper) goes away: the list follows, no API restart.
    p.fakes["faces"].stop()
    wait_for(lambda: sorted(checkpoint_enum(p.workflows()["txt2img"])) == sorted([SD15, SDXL]), 15,
             f"DreamShaper still listed: {checkpoint_enum(p.workflows()['txt2img'])}")
    wfs = p.workflows()
    assert (wfs["restore"]["available"], wfs["txt2img"]["available"], wfs["upscale"]["available"]) == (
        False, True, False)
    r = p.post("alice", "restore")
    assert r.status_code == 503 and r.headers.get("Retry-After"), r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "backend_unavailable"
    assert "FaceRestore" in r.get_json()["error"]["message"]
    assert p.sql("SELECT id FROM jobs") == []
    assert p.refusals() == {"sd15": 0, "sdxl": 0, "faces": 0}


# 2. Routing: a job goes only where its checkpoint and its node classes are ------------------------------

def test_default_jobs_go_only_to_the_server_with_the_default_checkpoint(pool):
    p = pool(sd15=serves("sd15"), sdxl=serves("sdxl"))
    p.start_listener()
    ids = [p.submit("alice", seed=i)["id"] for i in range(8)]  # default checkpoint: only sd15 has it
    rows = p.wait_final(ids)
    assert [rows[j]["status"] for j in ids] == ["succeeded"] * 8, [rows[j]["error_message"] for j in ids]
    assert [p.landed(j) for j in ids] == [["sd15"]] * 8
    assert p.fakes["sdxl"].prompts == []

    xl = p.submit("alice", checkpoint=SDXL)["id"]
    assert p.wait_final([xl])[xl]["status"] == "succeeded"
    assert p.landed(xl) == ["sdxl"]
    assert p.fakes["sdxl"].prompts[0]["graph"]["4"]["inputs"]["ckpt_name"] == SDXL

    r = p.post("alice", checkpoint="nowhere.safetensors")  # no server offers it: the caller's to fix
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_params", r.get_data(as_text=True)
    assert p.refusals() == {"sd15": 0, "sdxl": 0}


def test_a_job_needing_a_custom_node_runs_only_on_the_server_that_has_it(pool):
    p = pool(sd15=serves("sd15"), faces=serves("faces"))
    p.start_listener()
    p.fakes["faces"].pause()
    restored = [p.submit("alice", "restore", seed=i)["id"] for i in range(3)]
    # faces holds two (its slots); the third waits in the gateway queue though sd15 is idle.
    wait_for(lambda: sorted(p.server_of(j) or "-" for j in restored) == ["-", "faces", "faces"], 10,
             f"not held as expected: {[p.server_of(j) for j in restored]}")
    time.sleep(1.2)  # a couple of the listener's sweeps: still not sent to sd15
    assert p.fakes["sd15"].prompts == []
    plain = [p.submit("bob", seed=i)["id"] for i in range(2)]  # faces is full: these go to sd15 ...
    assert [p.server_of(j) for j in plain] == ["sd15", "sd15"]  # ... not held up by the restore job ahead
    assert p.server_of(restored[2]) is None
    p.fakes["faces"].resume()
    rows = p.wait_final(restored + plain)
    assert all(rows[j]["status"] == "succeeded" for j in rows), [rows[j]["error_message"] for j in rows]
    assert [p.landed(j) for j in restored] == [["faces"]] * 3
    assert [p.landed(j) for j in plain] == [["sd15"]] * 2
    assert all(q["graph"]["10"]["class_type"] == "FaceRestore" for q in p.fakes["faces"].prompts)
    assert p.refusals() == {"sd15": 0, "faces": 0}


# 3. Model affinity --------------------------------------------------------------------------------------

def test_a_server_that_last_used_the_checkpoint_is_preferred_to_a_less_busy_one(pool):
    p = pool({"COMFYUI_SLOTS": "3"}, one=serves("both"), two=serves("both"))
    p.start_listener()
    for fake in p.fakes.values():
        fake.pause()  # every prompt stays held: the load is what the test makes it
    first = p.submit("alice", checkpoint=SDXL)["id"]
    x = p.server_of(first)
    y = "two" if x == "one" else "one"
    second = p.submit("alice", checkpoint=SD15)["id"]
    assert p.server_of(second) == y  # neither used SD 1.5 last: the less busy one
    assert (p.backend(x)["last_model"], p.backend(y)["last_model"]) == (SDXL, SD15)
    third = p.submit("alice", checkpoint=SD15)["id"]
    fourth = p.submit("alice", checkpoint=SD15)["id"]
    # y holds 2 then 3 of 3 while x holds 1: affinity wins over load as long as y has a free slot.
    assert (p.server_of(third), p.server_of(fourth)) == (y, y)
    fifth = p.submit("alice", checkpoint=SD15)["id"]
    assert p.server_of(fifth) == x  # y is full: the model switch is paid on x
    assert p.backend(x)["last_model"] == SD15
    for fake in p.fakes.values():
        fake.resume()
    ids = [first, second, third, fourth, fifth]
    rows = p.wait_final(ids)
    assert [rows[j]["status"] for j in ids] == ["succeeded"] * 5
    assert [p.landed(j) for j in ids] == [[x], [y], [y], [y], [x]]
    assert p.refusals() == {"one": 0, "two": 0}


# 4. Fairness between users ------------------------------------------------------------------------------

def test_a_users_kth_job_goes_after_every_other_users_earlier_ones(pool):
    """One capable server with one slot, paused: alice submits 3 jobs, then bob 1. Bob's goes before alice's
    second, in queue_position and in the order the server receives them."""
    p = pool({"COMFYUI_SLOTS": "1"}, sd15=serves("sd15"), sdxl=serves("sdxl"))
    p.start_listener()
    p.fakes["sd15"].pause()
    filler = p.submit("zed")["id"]
    assert p.server_of(filler) == "sd15"
    a1, a2, a3 = (p.submit("alice", seed=i)["id"] for i in range(3))
    b1 = p.submit("bob")["id"]
    positions = {j: p.status(u, j)["queue_position"] for u, j in
                 (("alice", a1), ("alice", a2), ("alice", a3), ("bob", b1))}
    assert sorted(positions, key=positions.get) == [a1, b1, a2, a3], positions
    assert len(set(positions.values())) == 4, positions

    # Others submit: the oldest waiting job of each user never moves back (a later job may).
    oldest = {a1: positions[a1], b1: positions[b1]}
    a2_before = positions[a2]
    for n, user in enumerate(("carol", "dave", "erin", "alice", "bob", "carol")):
        p.submit(user, seed=100 + n)
        now = {a1: p.status("alice", a1)["queue_position"], b1: p.status("bob", b1)["queue_position"]}
        assert all(now[j] <= oldest[j] for j in now), (user, oldest, now)
        oldest = now
    assert p.status("alice", a2)["queue_position"] > a2_before  # carol's, dave's and erin's first jobs went ahead

    p.fakes["sd15"].resume()
    waiting = [r["id"] for r in p.sql("SELECT id FROM jobs WHERE status <> 'succeeded'")]
    rows = p.wait_final(waiting, timeout=40)
    assert all(r["status"] == "succeeded" for r in rows.values())
    order = [q["prompt_id"] for q in p.fakes["sd15"].prompts]
    assert order[0] == filler
    mine = [j for j in order if j in (a1, a2, a3, b1)]
    assert mine == [a1, b1, a2, a3], f"dispatch order {mine}, expected a1, b1, a2, a3 ({a1=} {a2=} {a3=} {b1=})"
    assert p.refusals() == {"sd15": 0, "sdxl": 0}


def test_queue_position_counts_only_what_starts_first_on_the_servers_that_can_run_the_job(pool):
    """API.md: queue_position is how many jobs will start before this one on the servers that can run it."""
    p = pool({"COMFYUI_SLOTS": "1"}, sd15=serves("sd15"), sdxl=serves("sdxl"))
    p.start_listener()
    for fake in p.fakes.values():
        fake.pause()
    held_sd15 = p.submit("zed")["id"]
    held_xl = p.submit("zed", checkpoint=SDXL)["id"]
    assert (p.server_of(held_sd15), p.server_of(held_xl)) == ("sd15", "sdxl")
    waiting_sd15 = p.submit("alice")["id"]  # waits for sd15, which cannot run bob's job
    xl = p.submit("bob", checkpoint=SDXL)["id"]
    # Only the prompt sdxl holds starts before bob's job on the one server that can run it.
    assert (p.status("alice", waiting_sd15)["queue_position"], p.status("bob", xl)["queue_position"]) == (1, 1)
    for fake in p.fakes.values():
        fake.resume()
    rows = p.wait_final([held_sd15, held_xl, waiting_sd15, xl])
    assert all(r["status"] == "succeeded" for r in rows.values())
    assert p.refusals() == {"sd15": 0, "sdxl": 0}


# 5. Drain and resume ------------------------------------------------------------------------------------

def test_a_drained_server_finishes_what_it_holds_and_takes_nothing_new_until_resumed(pool, monkeypatch, capsys):
    p = pool(one=serves("sd15"), two=serves("sd15"))
    p.start_listener()
    for fake in p.fakes.values():
        fake.pause()
    held = [p.submit("alice", seed=i)["id"] for i in range(4)]
    assert sorted(p.server_of(j) for j in held) == ["one", "one", "two", "two"]  # two slots each
    held_on_one = [j for j in held if p.server_of(j) == "one"]

    code, out = gateway(p, monkeypatch, capsys, "backends", "drain", p.urls["one"])
    assert code == 0 and "draining" in out
    health = p.health()
    assert (health["one"]["state"], health["one"]["listener_connected"]) == ("draining", True)
    assert health["two"]["state"] == "connected"
    later = [p.submit("bob", seed=10 + i)["id"] for i in range(4)]
    assert all(p.server_of(j) is None for j in later)  # two is full, one drains: they wait

    # Drain lives in MySQL: a fresh instance sees it too.
    fresh = p.context()
    with fresh.db.connection() as conn:
        assert [b["url"] for b in backends.serving(conn, fresh.config.comfyui_urls)] == [p.urls["two"]]
    assert p.health(create_app(lambda: fresh).test_client())["one"]["state"] == "draining"

    for fake in p.fakes.values():
        fake.resume()
    rows = p.wait_final(held + later)
    assert all(r["status"] == "succeeded" for r in rows.values()), [r["error_message"] for r in rows.values()]
    assert sorted(q["prompt_id"] for q in p.fakes["one"].prompts) == sorted(held_on_one)
    assert [p.landed(j) for j in later] == [["two"]] * 4

    code, out = gateway(p, monkeypatch, capsys, "backends", "resume", p.urls["one"])
    assert code == 0 and "active" in out
    assert p.health()["one"]["state"] == "connected"
    for fake in p.fakes.values():
        fake.pause()
    again = [p.submit("carol", seed=20 + i)["id"] for i in range(4)]
    assert sorted(p.server_of(j) for j in again) == ["one", "one", "two", "two"]
    for fake in p.fakes.values():
        fake.resume()
    assert all(r["status"] == "succeeded" for r in p.wait_final(again).values())
    assert p.refusals() == {"one": 0, "two": 0}


def test_a_value_only_a_draining_server_offers_is_a_503_to_retry_never_a_400(pool, monkeypatch, capsys):
    """400 is for values no server of the pool offers; one that cannot take jobs this moment is a 503."""
    p = pool(sd15=serves("sd15"), sdxl=serves("sdxl"))
    p.start_listener()
    code, _ = gateway(p, monkeypatch, capsys, "backends", "drain", p.urls["sdxl"])
    assert code == 0
    r = p.post("alice", checkpoint=SDXL)
    assert r.status_code == 503 and r.headers["Retry-After"], r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "backend_unavailable"
    r = p.post("alice", checkpoint="nobody-has-this.safetensors")
    assert r.status_code == 400 and r.get_json()["error"]["details"]["checkpoint"].startswith("must be one of")
    gateway(p, monkeypatch, capsys, "backends", "resume", p.urls["sdxl"])
    job = p.submit("alice", checkpoint=SDXL)
    assert p.wait_final([job["id"]])[job["id"]]["status"] == "succeeded" and p.landed(job["id"]) == ["sdxl"]
    assert p.refusals() == {"sd15": 0, "sdxl": 0}


# 6. Capabilities refreshed: after a restart with other models, and on `gateway backends refresh` ---------

def test_routing_and_workflows_follow_a_servers_new_models_without_an_api_restart(pool, monkeypatch, capsys):
    p = pool(sd15=serves("sd15"), sdxl=serves("sdxl"))
    p.start_listener()
    assert sorted(checkpoint_enum(p.workflows()["txt2img"])) == sorted([SD15, SDXL])
    xl = p.submit("alice", checkpoint=SDXL)["id"]
    assert p.wait_final([xl])[xl]["status"] == "succeeded"

    # sdxl comes back from a restart offering DreamShaper instead: read again when the listener reconnects.
    p.fakes["sdxl"].restart(downtime=0.5, checkpoints=[DREAM])
    wait_for(lambda: sorted(checkpoint_enum(p.workflows()["txt2img"])) == sorted([SD15, DREAM]), 15,
             f"workflows still list {checkpoint_enum(p.workflows()['txt2img'])}")
    dream = p.submit("alice", checkpoint=DREAM)["id"]
    r = p.post("alice", checkpoint=SDXL)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_params", r.get_data(as_text=True)
    assert p.wait_final([dream])[dream]["status"] == "succeeded"
    assert p.landed(dream) == ["sdxl"]

    # Models added without a restart: `gateway backends refresh URL` reads them now.
    p.fakes["sd15"].set_checkpoints([SD15, SDXL])
    code, out = gateway(p, monkeypatch, capsys, "backends", "refresh", p.urls["sd15"], "--wait", "15")
    assert code == 0 and "capabilities read" in out, out
    code, out = gateway(p, monkeypatch, capsys, "backends", "list", "--json")
    listed = {json.loads(line)["url"]: json.loads(line) for line in out.splitlines()}
    assert code == 0 and listed[p.urls["sd15"]]["checkpoints"] == sorted([SD15, SDXL]), out
    assert listed[p.urls["sdxl"]]["checkpoints"] == [DREAM]
    assert sorted(checkpoint_enum(p.workflows()["txt2img"])) == sorted([SD15, SDXL, DREAM])
    xl = p.submit("alice", checkpoint=SDXL)["id"]
    assert p.wait_final([xl])[xl]["status"] == "succeeded"
    assert p.landed(xl) == ["sd15"]
    assert p.refusals() == {"sd15": 0, "sdxl": 0}


# 7. A server that goes away ------------------------------------------------------------------------------

def _hold_two_on(p: Pool, name: str, other: str) -> tuple[str, str]:
    """A long job running on ``name`` and a second one waiting in its queue (``other`` drained meanwhile)."""
    with p.ctx.db.connection() as conn:
        backends.set_state(conn, p.urls[other], "draining")
    running = p.submit("alice", steps=40, seed=1)["id"]
    queued = p.submit("alice", seed=2)["id"]
    assert (p.server_of(running), p.server_of(queued)) == (name, name)
    wait_for(lambda: p.row(running)["status"] == "running", 10, "the long job never started")
    assert p.row(queued)["status"] == "queued"
    with p.ctx.db.connection() as conn:
        backends.set_state(conn, p.urls[other], "active")
    return running, queued


def test_jobs_of_a_server_that_dies_run_elsewhere_within_15s(pool):
    p = pool(doomed=serves("sd15", step_delay=0.1), spare=serves("sd15"))
    p.start_listener()
    running, queued = _hold_two_on(p, "doomed", "spare")
    stopped = time.monotonic()
    p.fakes["doomed"].stop()

    def running_elsewhere(job_id):
        row = p.row(job_id)
        return p.server_of(job_id) == "spare" and row["status"] in ("running", "succeeded")
    wait_for(lambda: running_elsewhere(running), 15, f"not running on spare 15 s after the stop: {p.row(running)}",
             interval=0.02)
    took = time.monotonic() - stopped
    wait_for(lambda: running_elsewhere(queued), 15, f"the queued job did not move: {p.row(queued)}")
    assert took < 15
    rows = p.wait_final([running, queued])
    assert [rows[j]["status"] for j in (running, queued)] == ["succeeded", "succeeded"]
    assert (rows[running]["lost_retries"], rows[queued]["lost_retries"]) == (1, 0)
    assert sorted(p.landed(running)) == ["doomed", "spare"] and sorted(p.landed(queued)) == ["doomed", "spare"]
    assert len(p.sql("SELECT id FROM usage_records WHERE job_id IN (%s, %s)", (running, queued))) == 2
    assert p.refusals() == {"doomed": 0, "spare": 0}


@pytest.mark.parametrize("retries", [1, 0])
def test_a_server_restart_runs_held_jobs_again_and_retries_the_running_one_as_configured(pool, retries):
    p = pool({"LOST_JOB_RETRIES": str(retries)}, flaky=serves("sd15", step_delay=0.1), spare=serves("sd15"))
    p.start_listener()
    running, queued = _hold_two_on(p, "flaky", "spare")
    p.fakes["flaky"].restart(downtime=1)
    rows = p.wait_final([running, queued], timeout=25)  # nothing stuck
    assert rows[queued]["status"] == "succeeded" and rows[queued]["lost_retries"] == 0
    assert len(p.landed(queued)) == 2  # once before the restart, once after (there or elsewhere)
    if retries:
        assert (rows[running]["status"], rows[running]["lost_retries"]) == ("succeeded", 1)
        assert len(p.landed(running)) == 2
    else:
        assert (rows[running]["status"], rows[running]["error_code"]) == ("failed", "backend_lost")
        assert p.landed(running) == ["flaky"]
    for job_id in (running, queued):
        assert len(p.sql("SELECT id FROM usage_records WHERE job_id=%s", (job_id,))) == 1
    assert p.refusals() == {"flaky": 0, "spare": 0}


# 8. Two API instances and two listeners dispatching at once ---------------------------------------------

def test_racing_dispatchers_send_each_job_once_and_never_overfill_a_server(pool):
    p = pool({"DISPATCH_SWEEP_S": "0.1"}, one=serves("sd15"), two=serves("sd15"), three=serves("faces"))
    # Each listener owns some servers (leases taken for them beforehand) and is the other's standby.
    with p.ctx.db.connection() as conn:
        for name, owner in (("one", "listener-1"), ("two", "listener-1"), ("three", "listener-2")):
            assert backends.acquire_lease(conn, backends.ensure_backend(conn, p.urls[name]), owner, 3)
    p.start_listener(owner="listener-1", wait=False)
    p.start_listener(owner="listener-2")
    assert {name: b["owner"] for name, b in p.health().items()} == {
        "one": "listener-1", "two": "listener-1", "three": "listener-2"}
    slots = p.ctx.config.comfyui_slots
    apis = [p.context(), p.context()]
    clients = [create_app(lambda c=c: c).test_client() for c in apis for _ in range(4)]
    for c in clients:
        c.get("/healthz")
    for user in [f"u{n}" for n in range(len(clients))]:
        p.headers(user)

    peaks = collections.Counter()
    db_peaks = collections.Counter()
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            for name, fake in p.fakes.items():
                peaks[name] = max(peaks[name], fake._call(lambda s: s.queue_remaining()))
            for r in p.sql("SELECT backend_id, COUNT(*) AS n FROM jobs WHERE status IN ('submitting','queued',"
                           "'running') AND backend_id IS NOT NULL GROUP BY backend_id"):
                db_peaks[r["backend_id"]] = max(db_peaks[r["backend_id"]], r["n"])
            time.sleep(0.01)

    answers: list[tuple[int, str | None, str]] = []  # (status, job id, body)

    def submit_many(n: int, client):
        for k in range(8):
            workflow = "restore" if k % 4 == 3 else "txt2img"
            r = p.post(f"u{n}", workflow, client, seed=n * 100 + k)
            job = (r.get_json() or {}).get("job") or {}
            answers.append((r.status_code, job.get("id"), r.get_data(as_text=True)))
    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=submit_many, args=(n, c)) for n, c in enumerate(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created = [r["id"] for r in p.sql("SELECT id FROM jobs")]
        rows = p.wait_final(created, timeout=40)
    finally:
        sampling.set()
        sampler.join()
    # Every request was answered 202, and no job exists that its caller was told failed.
    refused = [body for status, _, body in answers if status != 202]
    assert (refused, len(created)) == ([], 8 * len(clients)), (
        f"{len(created)} jobs created, {len(answers) - len(refused)} answered 202")
    submitted = [job_id for _, job_id, _ in answers]
    assert all(r["status"] == "succeeded" for r in rows.values()), collections.Counter(
        (r["status"], r["error_code"]) for r in rows.values())
    sent = collections.Counter(q["prompt_id"] for fake in p.fakes.values() for q in fake.prompts)
    assert sent == collections.Counter(submitted), [j for j, n in sent.items() if n != 1]
    assert all(p.landed(j) == ["three"] for j in submitted if p.row(j)["workflow"] == "restore")
    assert max(peaks.values()) <= slots and max(db_peaks.values()) <= slots, (peaks, db_peaks)
    assert peaks["one"] and peaks["two"] and peaks["three"]  # every server took part
    assert p.refusals() == {"one": 0, "two": 0, "three": 0}


# 9. /healthz per server ---------------------------------------------------------------------------------

def test_healthz_shows_state_owner_slots_in_use_and_a_live_standby(pool, monkeypatch, capsys):
    p = pool(sd15=serves("sd15"), sdxl=serves("sdxl"))
    first = p.start_listener(owner="first")
    health = p.health()
    for name in ("sd15", "sdxl"):
        b = health[name]
        assert (b["state"], b["owner"], b["listener_connected"], b["slots"], b["slots_in_use"],
                b["standby_alive"]) == ("connected", "first", True, 2, 0, False), b

    p.fakes["sd15"].pause()
    held = [p.submit("alice", seed=i)["id"] for i in range(3)]  # two held by sd15 (its slots), one waiting
    health = p.health()
    assert (health["sd15"]["slots_in_use"], health["sdxl"]["slots_in_use"]) == (2, 0)
    assert p.server_of(held[2]) is None
    code, out = gateway(p, monkeypatch, capsys, "backends", "slots", p.urls["sd15"], "3")
    assert code == 0, out
    wait_for(lambda: p.server_of(held[2]) == "sd15", 10, "a third slot did not take the waiting job")
    assert (p.health()["sd15"]["slots"], p.health()["sd15"]["slots_in_use"]) == (3, 3)
    assert p.fakes["sd15"]._call(lambda s: s.queue_remaining()) == 3

    second = p.start_listener(owner="second", wait=False)
    wait_for(lambda: all(b["standby_alive"] for b in p.health().values()), 10, f"no standby: {p.health()}")
    assert {b["owner"] for b in p.health().values()} == {"first"}
    # The owner stops: the standby takes every server over, and no standby is left.
    p.stop_listener(first)
    wait_for(lambda: all(b["owner"] == "second" and b["state"] == "connected" for b in p.health().values()), 10,
             f"no takeover: {p.health()}")
    assert not any(b["standby_alive"] for b in p.health().values()), p.health()

    p.fakes["sd15"].resume()
    assert all(r["status"] == "succeeded" for r in p.wait_final(held).values())
    assert p.health()["sd15"]["slots_in_use"] == 0
    p.fakes["sdxl"].stop()
    wait_for(lambda: p.health()["sdxl"]["state"] == "down", 10, f"sdxl not down: {p.health()['sdxl']}")
    assert p.health()["sdxl"]["listener_connected"] is False
    assert p.health()["sd15"]["owner"] == second.owner
    assert p.refusals() == {"sd15": 0, "sdxl": 0}
