"""ComfyClient's error mapping and the enum_from choices cache, against the fake ComfyUI."""

from __future__ import annotations

import pytest
import requests

from shared.comfy import ChoicesCache, ComfyClient
from tests.fakes.comfyui import FakeComfy


@pytest.fixture
def fake():
    with FakeComfy() as f:
        yield f


@pytest.fixture
def client(fake):
    with requests.Session() as s:
        yield ComfyClient(s, fake.base_url, timeout=2)


def test_choices_are_cached_for_their_ttl(fake, client):
    cache = ChoicesCache(ttl=300)
    info = cache.object_info(client, "CheckpointLoaderSimple")
    assert "CheckpointLoaderSimple" in info
    fake.fail_http("/object_info", status=502)  # a second request would fail: none is made
    assert cache.object_info(client, "CheckpointLoaderSimple") == info


def test_a_failed_look_up_is_not_repeated_at_once(fake, client, monkeypatch):
    cache = ChoicesCache(ttl=300)
    fake.fail_http("/object_info", status=502, times=1)
    assert cache.object_info(client, "CheckpointLoaderSimple") is None
    # The server would answer now, but the failure is remembered for a few seconds.
    assert cache.object_info(client, "CheckpointLoaderSimple") is None
    monkeypatch.setattr(ChoicesCache, "FAILURE_TTL", 0.0)
    assert "CheckpointLoaderSimple" in cache.object_info(client, "CheckpointLoaderSimple")


def test_a_stale_answer_beats_none(fake, client, monkeypatch):
    cache = ChoicesCache(ttl=0.0)
    info = cache.object_info(client, "CheckpointLoaderSimple")
    fake.fail_http("/object_info", status=502, times=5)
    assert cache.object_info(client, "CheckpointLoaderSimple") == info


def test_a_slow_failure_is_remembered_from_when_it_ended(monkeypatch):
    """A look-up that times out after longer than FAILURE_TTL still spares the next requests."""
    import time as time_mod

    from shared.comfy import ComfyTimeoutError
    calls = []

    class Hanging:  # a client whose server accepts and never answers
        base_url = "http://hanging"

        def object_info(self, class_type):
            calls.append(class_type)
            time_mod.sleep(0.3)
            raise ComfyTimeoutError("GET /object_info: no answer within 0.3s")

    monkeypatch.setattr(ChoicesCache, "FAILURE_TTL", 0.2)
    cache = ChoicesCache(ttl=300)
    assert cache.object_info(Hanging(), "KSampler") is None
    assert cache.object_info(Hanging(), "KSampler") is None
    assert calls == ["KSampler"]
