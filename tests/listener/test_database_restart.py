"""8. MySQL restart: functions answer 503 (not 500) while it is down and recover by themselves;
the listener keeps its place and loses no completion that happened meanwhile."""

from __future__ import annotations

import requests

from functions.app import create_app
from listener.connection import Listener
from shared.context import Context
from shared.db import connect
from shared.localdb import LocalDatabase
from shared.migrate import migrate
from shared.submission import submit
from shared.users import get_or_create_user
from tests.listener.conftest import FAST, txt2img
from tests.stack import wait_for


def test_listener_and_functions_survive_a_database_restart(make_config, fake, tmp_path):
    server = LocalDatabase(tmp_path / "mysql")
    url = server.start()
    conn = connect(url)
    migrate(conn)
    user = get_or_create_user(conn, provider="dev", subject="db")
    conn.close()
    cfg = make_config(COMFYUI_URLS=fake.base_url, DATABASE_URL=f"mysql://root:@127.0.0.1:{url.port}/gateway",
                      HISTORY_RETRY_S="1", **FAST)
    ctx = Context(cfg)
    client = create_app(lambda: ctx).test_client()
    listener = Listener(Context(cfg))
    listener.start()
    try:
        wait_for(lambda: client.get("/healthz").get_json()["backends"][0]["listener_connected"], 20, "no listener")
        _, row = submit(ctx, user, txt2img(seed=81, steps=40))
        wait_for(lambda: _status(url, row["id"]) == "running", 10, "never ran")
        server.stop()

        r = client.post("/v1/auth/dev", json={"user": "x"})
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "database_unavailable"
        assert client.get("/healthz").status_code == 503
        # The job finishes on ComfyUI while the database is down.
        wait_for(lambda: requests.get(f"{fake.base_url}/history/{row['id']}", timeout=5).json(), 20,
                 "job never finished on ComfyUI")

        server = LocalDatabase(tmp_path / "mysql", port=url.port)
        server.start()
        wait_for(lambda: client.get("/healthz").status_code == 200, 20, "functions did not recover")
        wait_for(lambda: _status(url, row["id"]) == "succeeded", 30, "completion lost during the outage")
        c = connect(url)
        with c.cursor() as cur:
            cur.execute("SELECT COUNT(*) AS n FROM job_outputs WHERE job_id=%s", (row["id"],))
            assert cur.fetchone()["n"] == 1
            cur.execute("SELECT COUNT(*) AS n FROM usage_records WHERE job_id=%s", (row["id"],))
            assert cur.fetchone()["n"] == 1
        c.close()
    finally:
        listener.stop()
        ctx.db.close()
        server.stop()


def _status(url, job_id):
    try:
        c = connect(url, connect_timeout=1)
    except Exception:
        return None
    try:
        with c.cursor() as cur:
            cur.execute("SELECT status FROM jobs WHERE id=%s", (job_id,))
            row = cur.fetchone()
            return row and row["status"]
    finally:
        c.close()
