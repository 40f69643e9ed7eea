"""Fixtures for listener tests: a fake ComfyUI, an in-process listener, submissions."""

from __future__ import annotations

import pytest

from listener.connection import Listener
from shared.context import Context
from shared.db import connect, query_one
from shared.submission import submit
from shared.users import get_or_create_user
from tests.fakes.comfyui import FakeComfy
from tests.stack import sql, wait_for

FAST = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_ACTIVE_JOBS": "0", "DAILY_JOB_QUOTA": "0"}


def txt2img(seed=1, steps=4, **params):
    return {"workflow": "txt2img", "params": {"prompt": "a cat", "width": 64, "height": 64, "steps": steps,
                                                "seed": seed, **params}}


class Harness:
    """A Context on the test database, its listener, and helpers to drive and inspect jobs."""

    def __init__(self, ctx: Context, database_url):
        self.ctx = ctx
        self.database_url = database_url
        self.listener: Listener | None = None
        with ctx.db.connection() as conn:
            self.user = get_or_create_user(conn, provider="dev", subject="tester")

    def start_listener(self) -> Listener:
        self.listener = Listener(self.ctx)
        self.listener.start()
        for url in self.ctx.config.comfyui_urls:
            wait_for(lambda: self.backend(url) and self.backend(url)["connected"], 20, f"listener not on {url}")
        return self.listener

    def stop_listener(self) -> None:
        if self.listener:
            self.listener.stop()
            self.listener = None

    def backend(self, url: str) -> dict | None:
        conn = connect(self.database_url)
        try:
            return query_one(conn, "SELECT * FROM backends WHERE url=%s", (url,))
        finally:
            conn.close()

    def submit(self, body=None, **kw) -> str:
        status, row = submit(self.ctx, self.user, body or txt2img(**kw))
        assert status == 202
        return row["id"]

    def sql(self, text: str, args=None) -> list[dict]:
        return sql(self.database_url, text, args)

    def job(self, job_id: str) -> dict:
        return self.sql("SELECT * FROM jobs WHERE id=%s", (job_id,))[0]

    def wait_final(self, job_id: str, timeout: float = 30.0) -> dict:
        def final():
            job = self.job(job_id)
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None
        return wait_for(final, timeout, f"job {job_id} not final: {self.job(job_id)}", interval=0.05)

    def outputs(self, job_id: str) -> list[dict]:
        return self.sql("SELECT * FROM job_outputs WHERE job_id=%s ORDER BY node_id, idx", (job_id,))

    def usage(self, job_id: str) -> list[dict]:
        return self.sql("SELECT * FROM usage_records WHERE job_id=%s", (job_id,))


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.02) as f:
        yield f


@pytest.fixture
def harness_factory(make_config, db_conn, database_url):
    made = []

    def make(*fakes, **env) -> Harness:
        cfg = make_config(COMFYUI_URLS=",".join(f.base_url for f in fakes), **{**FAST, **env})
        h = Harness(Context(cfg), database_url)
        made.append(h)
        return h
    yield make
    for h in made:
        h.stop_listener()
        h.ctx.db.close()


@pytest.fixture
def harness(harness_factory, fake):
    h = harness_factory(fake)
    h.start_listener()
    return h
