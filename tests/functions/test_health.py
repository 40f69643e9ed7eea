"""GET /healthz tells the truth about each server's listener: a real `gateway serve`, real
`gateway listen` subprocesses killed with SIGKILL, the fake ComfyUI."""

from __future__ import annotations

import signal
import socket
import time

import pytest
import requests

from shared.openapi import validate_response
from tests.fakes.comfyui import FakeComfy
from tests.stack import start_api, start_listener, wait_for


@pytest.fixture
def stack(make_config, db_conn, tmp_path):
    with FakeComfy(step_delay=0.05) as fake:
        cfg = make_config(COMFYUI_URLS=fake.base_url)  # LEASE_S=3
        api, base = start_api(cfg, tmp_path)
        started = []

        def listener(name: str):
            proc = start_listener(cfg, tmp_path, name)
            started.append(proc)
            return proc
        try:
            yield cfg, base, listener
        finally:
            for proc in started:
                proc.stop()
            api.stop()


def server(base: str) -> dict:
    [entry] = requests.get(base + "/healthz", timeout=5).json()["backends"]
    return entry


def test_a_killed_listener_is_not_connected_within_its_lease(stack):
    cfg, base, listener = stack
    owner = listener("owner")
    wait_for(lambda: server(base)["listener_connected"], 30, f"the listener did not connect: {owner.log()[-2000:]}")
    time.sleep(cfg.lease_s / 2)  # past a renewal or two
    seen = server(base)
    assert seen["state"] == "connected" and seen["owner"].startswith(f"{socket.gethostname()}:{owner.pid}:")
    assert seen["owner_host"] == socket.gethostname()
    assert 0 <= seen["lease_age_s"] <= cfg.lease_s / 3 + 1
    assert 0 < seen["lease_expires_in_s"] <= cfg.lease_s
    assert seen["last_event_at"] is not None and seen["last_event_age_s"] >= 0
    assert seen["standby_alive"] is False
    assert validate_response("GET", "/healthz", 200, requests.get(base + "/healthz", timeout=5).json()) == []

    owner.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not server(base)["listener_connected"], cfg.lease_s + 1,
             f"still connected {cfg.lease_s + 1}s after the owner was killed: {server(base)}", interval=0.05)
    elapsed = time.monotonic() - killed
    gone = server(base)
    assert (gone["state"], gone["owner"], gone["owner_host"], gone["lease_age_s"], gone["lease_expires_in_s"]) == (
        "down", None, None, None, None), gone
    assert elapsed <= cfg.lease_s + 1
    assert validate_response("GET", "/healthz", 200, requests.get(base + "/healthz", timeout=5).json()) == []


def test_a_standby_is_shown_and_takes_over_a_killed_owner(stack):
    cfg, base, listener = stack
    owner = listener("owner")
    wait_for(lambda: server(base)["listener_connected"], 30, "the listener did not connect")
    standby = listener("standby")
    wait_for(lambda: server(base)["standby_alive"], 10, f"no standby shown: {server(base)}")
    assert server(base)["owner"].split(":")[1] == str(owner.pid)

    owner.kill(signal.SIGKILL)
    # Within a lease and a third (the standby looks every third of it) it owns the server, connected.
    def taken_over() -> bool:
        s = server(base)
        return s["listener_connected"] and (s["owner"] or "::").split(":")[1] == str(standby.pid)
    wait_for(taken_over, cfg.lease_s * 4 / 3 + 2, f"no takeover: {server(base)}")
    assert server(base)["standby_alive"] is False  # nobody is left to take over from it
