"""`gateway backends list|drain|resume|refresh|slots` (shared/pool/admin.py) against the test database.

The commands run in-process through ``shared.cli.main`` with the environment a
deployment would give them (as tests/shared/test_cli.py builds it); one check
runs a real second process to show that drain state lives in MySQL.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from shared import backends, cli
from shared.context import Context
from shared.db import connect, execute, isoformat, query_one
from shared.pool import capabilities, dispatch, queue
from tests.shared.test_cli import gateway
from tests.stack import config_env

URL_A, URL_B, URL_C = "http://a.test", "http://b.test:8188", "http://c.test"
POOL = ",".join((URL_A, URL_B, URL_C))
CKPT = "CheckpointLoaderSimple.ckpt_name"


def caps_with(*models: str) -> dict:
    return {"classes": ["CheckpointLoaderSimple", "KSampler", "SaveImage"],
            "choices": {CKPT: list(models), "KSampler.sampler_name": ["euler"]}}


def serving_backend(conn, url: str, *, owner: str = "listener-1", caps: dict | None = None) -> int:
    """A backend as a live listener leaves it: leased, connected, capabilities read."""
    backend_id = backends.ensure_backend(conn, url)
    assert backends.acquire_lease(conn, backend_id, owner, 120)
    assert backends.set_connected(conn, backend_id, owner, f"client-{backend_id}")
    caps = caps or caps_with("m1.safetensors")
    assert backends.store_capabilities(conn, backend_id, owner, caps, capabilities.digest(caps))
    return backend_id


@pytest.fixture
def cfg(make_config):
    return make_config(COMFYUI_URLS=POOL, COMFYUI_SLOTS="2")


@pytest.fixture
def run(cfg, monkeypatch, capsys):
    """Run `gateway ...` in this process; return (exit code, stdout, stderr or the exit message)."""
    for key, value in config_env(cfg).items():
        monkeypatch.setenv(key, value)

    def run_(*args):
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        if isinstance(code, str):  # sys.exit("message"): printed to stderr, exit status 1
            return 1, out, err + code
        return code, out, err
    return run_


def backend_row(cfg, url: str) -> dict | None:
    """Read the row on a connection of its own (another instance's view)."""
    conn = connect(cfg.database_url)
    try:
        return query_one(conn, "SELECT * FROM backends WHERE url=%s", (url,))
    finally:
        conn.close()


# -- list ------------------------------------------------------------------------------------

@pytest.fixture
def pool(db_conn):
    """A: connected, one job held, a standby listener; B: connected and draining, 4 slots; C: never seen."""
    a = serving_backend(db_conn, URL_A, caps=caps_with("sd15.safetensors", "dream.safetensors"))
    backends.record_status(db_conn, a, 0)
    backends.heartbeat(db_conn, a, "listener-1")
    backends.heartbeat(db_conn, a, "listener-2")
    b = serving_backend(db_conn, URL_B, owner="listener-2", caps=caps_with("sdxl.safetensors"))
    backends.set_state(db_conn, URL_B, "draining")
    backends.set_slots(db_conn, URL_B, 4)
    queue.enqueue(db_conn, job_id="00000000-0000-0000-0000-000000000001", user_id="u", workflow="txt2img",
                  params={}, prompt={}, needs={"classes": [], "values": {}}, model=None, inputs=None, servers=1)
    assert queue.claim(db_conn, {"id": "00000000-0000-0000-0000-000000000001", "user_id": "u"},
                       {"id": a, "client_id": f"client-{a}"})
    yield {"a": a, "b": b}
    execute(db_conn, "DELETE FROM backend_listeners WHERE backend_id IN (%s, %s)", (a, b))


def test_list_json(run, pool, db_conn):
    code, out, err = run("backends", "list", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["url"] for r in rows] == [URL_A, URL_B, URL_C]  # every configured server, in COMFYUI_URLS order
    a, b, c = rows
    assert (a["state"], a["owner"], a["slots_in_use"], a["slots"], a["checkpoints"], a["standby_alive"]) == (
        "connected", "listener-1", 1, 2, ["dream.safetensors", "sd15.safetensors"], True)
    last_event = backends.find(db_conn, URL_A)["last_event_at"]
    assert a["last_event_at"] == isoformat(last_event) and a["last_event_at"].endswith("Z")
    assert a["capabilities_at"] is not None and not a["draining"]
    assert (b["state"], b["owner"], b["slots_in_use"], b["slots"], b["checkpoints"], b["draining"]) == (
        "draining", "listener-2", 0, 4, ["sdxl.safetensors"], True)
    assert b["last_event_at"] is None and not b["standby_alive"]
    assert (c["state"], c["owner"], c["slots_in_use"], c["slots"], c["checkpoints"], c["last_event_at"]) == (
        "down", None, 0, 2, [], None)


def test_list_table(run, pool, db_conn):
    code, out, err = run("backends", "list")
    assert code == 0, err
    header, *lines = out.splitlines()
    for column in ("URL", "STATE", "OWNER", "SLOTS", "LAST EVENT", "CHECKPOINTS"):
        assert column in header
    assert len(lines) == 3
    line = {url: next(x for x in lines if x.startswith(url + " ")) for url in (URL_A, URL_B, URL_C)}
    a = line[URL_A].split()
    assert a[1:4] == ["connected", "listener-1", "1/2"]
    assert isoformat(backends.find(db_conn, URL_A)["last_event_at"]) in a
    assert line[URL_A].endswith("dream.safetensors, sd15.safetensors")
    assert line[URL_B].split()[1:4] == ["draining", "listener-2", "0/4"] and line[URL_B].endswith("sdxl.safetensors")
    assert line[URL_C].split()[1:4] == ["down", "-", "0/2"] and line[URL_C].endswith(" -")


def test_a_server_whose_listener_is_gone_is_down(run, db_conn):
    backend_id = serving_backend(db_conn, URL_A)
    execute(db_conn, "UPDATE backends SET lease_until=UTC_TIMESTAMP(3) - INTERVAL 1 SECOND WHERE id=%s",
            (backend_id,))
    code, out, _ = run("backends", "list", "--json")
    a = json.loads(out.splitlines()[0])
    assert code == 0 and (a["url"], a["state"], a["owner"]) == (URL_A, "down", None)
    assert a["checkpoints"] == ["m1.safetensors"]  # what it offered is still known


# -- drain / resume --------------------------------------------------------------------------

def test_drain_and_resume_hold_in_mysql_for_every_instance(run, cfg, db_conn):
    a = serving_backend(db_conn, URL_A)
    serving_backend(db_conn, URL_B, owner="listener-2")
    code, out, err = run("backends", "drain", URL_A + "/")  # spelled with a trailing slash
    assert code == 0, err
    assert out.strip() == f"{URL_A}: draining (takes no new jobs; what it holds finishes)"
    assert backend_row(cfg, URL_A)["state"] == "draining" and backend_row(cfg, URL_B)["state"] == "active"

    # Another instance (its own Context and connections) sends nothing there.
    queue.enqueue(db_conn, job_id="00000000-0000-0000-0000-00000000000a", user_id="u", workflow="txt2img",
                  params={}, prompt={}, needs={"classes": ["KSampler"], "values": {CKPT: "m1.safetensors"}},
                  model="m1.safetensors", inputs=None, servers=2)
    other = Context(cfg)
    try:
        with other.db.connection() as conn:
            assert [b["url"] for b in backends.serving(conn, cfg.comfyui_urls)] == [URL_B]
        assert [b["url"] for _, b in dispatch.claim(other)] == [URL_B]
    finally:
        other.db.close()

    # A new process sees it too.
    proc = gateway(cfg, "backends", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    states = {r["url"]: r["state"] for r in map(json.loads, proc.stdout.splitlines())}
    assert states == {URL_A: "draining", URL_B: "connected", URL_C: "down"}

    code, out, err = run("backends", "resume", URL_A)
    assert code == 0, err
    assert out.strip() == f"{URL_A}: active"
    assert backend_row(cfg, URL_A)["state"] == "active"
    with connect(cfg.database_url) as conn:
        assert a in [b["id"] for b in backends.serving(conn, cfg.comfyui_urls)]


def test_drain_a_server_never_seen(run, cfg, db_conn):
    """Drain before the listener ever reached it: the row is made, and it comes up draining."""
    assert backend_row(cfg, URL_C) is None
    code, _, err = run("backends", "drain", URL_C)
    assert code == 0, err
    assert backend_row(cfg, URL_C)["state"] == "draining"
    code, out, _ = run("backends", "list", "--json")
    c = json.loads(out.splitlines()[2])
    assert (c["url"], c["state"], c["draining"]) == (URL_C, "down", True)
    serving_backend(db_conn, URL_C)  # its listener connects
    code, out, _ = run("backends", "list", "--json")
    assert json.loads(out.splitlines()[2])["state"] == "draining"


# -- slots -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, stored, shown", [
    ("5", 5, "5 slot(s)"),
    ("1", 1, "1 slot(s)"),
    ("64", 64, "64 slot(s)"),
    ("default", None, "2 slot(s) (COMFYUI_SLOTS)"),
])
def test_slots(run, cfg, db_conn, value, stored, shown):
    backends.set_slots(db_conn, URL_A, 9)
    code, out, err = run("backends", "slots", URL_A, value)
    assert code == 0, err
    assert out.strip() == f"{URL_A}: {shown}"
    assert backend_row(cfg, URL_A)["slots"] == stored
    code, out, _ = run("backends", "list", "--json")
    assert json.loads(out.splitlines()[0])["slots"] == (stored or 2)


@pytest.mark.parametrize("value", ["0", "65", "x", "-1", "2.5", ""])
def test_slots_refuses_a_bad_number(run, cfg, db_conn, value):
    backends.set_slots(db_conn, URL_A, 3)
    code, out, err = run("backends", "slots", URL_A, value)
    assert code not in (0, None)
    assert "slots must be a whole number from 1 to 64, or 'default'" in err
    assert backend_row(cfg, URL_A)["slots"] == 3


# -- refresh ---------------------------------------------------------------------------------

def test_refresh_without_a_listener_says_so(run, cfg, db_conn):
    serving_backend(db_conn, URL_A)
    start = time.monotonic()
    code, out, err = run("backends", "refresh", URL_A, "--wait", "0.5")
    elapsed = time.monotonic() - start
    assert code == 1
    assert out.strip() == f"{URL_A}: not read yet (is its listener connected?)"
    assert backend_row(cfg, URL_A)["refresh_requested"] == 1
    assert backend_row(cfg, URL_B) is None or not backend_row(cfg, URL_B)["refresh_requested"]
    assert 0.5 <= elapsed < 5


def _listener_reads(cfg, url: str, owner: str, stop: threading.Event) -> threading.Thread:
    """Do what a listener does when asked: read /object_info again and store it (clearing the request)."""
    def loop():
        conn = connect(cfg.database_url)
        try:
            while not stop.is_set():
                row = query_one(conn, "SELECT id, refresh_requested FROM backends WHERE url=%s", (url,))
                if row and row["refresh_requested"]:
                    caps = caps_with("m1.safetensors", "new.safetensors")
                    assert backends.store_capabilities(conn, row["id"], owner, caps, capabilities.digest(caps))
                    return
                time.sleep(0.05)
        finally:
            conn.close()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_refresh_waits_for_the_listener_to_read(run, cfg, db_conn):
    serving_backend(db_conn, URL_A)
    stop = threading.Event()
    listener = _listener_reads(cfg, URL_A, "listener-1", stop)
    try:
        code, out, err = run("backends", "refresh", URL_A, "--wait", "10")
    finally:
        stop.set()
        listener.join(timeout=5)
    assert code == 0, err
    assert out.strip() == f"{URL_A}: capabilities read"
    row = backend_row(cfg, URL_A)
    assert row["refresh_requested"] == 0 and "new.safetensors" in json.loads(row["capabilities"])["choices"][CKPT]


def test_refresh_of_every_server_reports_each(run, cfg, db_conn):
    serving_backend(db_conn, URL_A)
    stop = threading.Event()
    listener = _listener_reads(cfg, URL_A, "listener-1", stop)
    try:
        code, out, _ = run("backends", "refresh", "--wait", "1")
    finally:
        stop.set()
        listener.join(timeout=5)
    assert code == 1  # B and C have no listener
    assert out.splitlines() == [f"{URL_A}: capabilities read",
                                f"{URL_B}: not read yet (is its listener connected?)",
                                f"{URL_C}: not read yet (is its listener connected?)"]
    assert [backend_row(cfg, u)["refresh_requested"] for u in (URL_A, URL_B, URL_C)] == [0, 1, 1]


# -- URLs that are not in the pool -----------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("drain", "http://elsewhere.test"),
    ("resume", "http://elsewhere.test"),
    ("slots", "http://elsewhere.test", "3"),
    ("refresh", URL_A, "http://elsewhere.test", "--wait", "0"),
    ("drain", "http://A.test"),  # spelled differently from COMFYUI_URLS
])
def test_an_unknown_url_is_a_clear_error(run, cfg, db_conn, args):
    code, out, err = run("backends", *args)
    assert code not in (0, None)
    bad = args[2] if args[0] == "refresh" else args[1]
    assert f"{bad} is not one of COMFYUI_URLS" in err and URL_A in err and URL_C in err
    assert backend_row(cfg, bad) is None
    assert backend_row(cfg, URL_A) is None  # nothing was half done


def test_backends_needs_a_subcommand(run):
    code, _, err = run("backends")
    assert code == 2 and "list" in err
