"""ComfyClient against the fake ComfyUI: the whole /object_info, and its error mapping."""

from __future__ import annotations

import pytest
import requests

from shared.comfy import ComfyClient, ComfyProtocolError, ComfyUnavailableError
from tests.fakes.comfyui import FakeComfy


@pytest.fixture
def fake():
    with FakeComfy(checkpoints=("a.safetensors", "b.safetensors")) as f:
        yield f


@pytest.fixture
def client(fake):
    with requests.Session() as s:
        yield ComfyClient(s, fake.base_url, timeout=2)


def test_object_info_lists_every_class_with_its_choices(client):
    info = client.object_info()
    assert {"CheckpointLoaderSimple", "KSampler", "SaveImage"} <= set(info)
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.safetensors"]


@pytest.mark.parametrize("status, error", [(502, ComfyUnavailableError), (200, ComfyProtocolError)])
def test_a_bad_object_info_answer_is_an_error(fake, client, status, error):
    fake.fail_http("/object_info", status=status, html=True)
    with pytest.raises(error):
        client.object_info()
