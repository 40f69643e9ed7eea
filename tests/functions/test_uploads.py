"""Input images: presigned upload the way wx.uploadFile sends it, checks at submit, img2img end to end."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlsplit

import pytest
import requests

from functions.app import create_app
from listener.connection import Listener
from shared.context import Context
from shared.db import execute, query_one
from tests.fakes.comfyui import FakeComfy, make_png
from tests.listener.conftest import FAST
from tests.stack import wait_for

PNG = make_png(32, 24, seed=5)


@pytest.fixture
def fake():
    with FakeComfy(step_delay=0.01) as f:
        yield f


@pytest.fixture(params=["local", "s3"])
def stack(request, make_config, db_conn, fake):
    env = {"COMFYUI_URLS": fake.base_url, "PUBLIC_BASE_URL": "http://gateway.test", "MAX_UPLOAD_BYTES": "200000",
           **FAST}
    if request.param == "s3":
        s3 = request.getfixturevalue("s3rver")
        env.update(STORAGE_URL=f"s3://{s3.bucket}/up-{time.time_ns()}", S3_ENDPOINT_URL=s3.endpoint_url)
    ctx = Context(make_config(**env))
    listener = Listener(ctx)
    listener.start()
    client = create_app(lambda: ctx).test_client()
    wait_for(lambda: client.get("/healthz").get_json()["backends"][0]["listener_connected"], 20, "no listener")
    yield request.param, ctx, client
    listener.stop()


def login(client, name):
    body = client.post("/v1/auth/dev", json={"user": name}).get_json()
    return {"Authorization": f"Bearer {body['token']}"}


def wx_upload(client, upload: dict, data: bytes, part_type="image/png"):
    """POST multipart/form-data exactly like wx.uploadFile({url, formData: fields, name: file_field})."""
    files = {upload["file_field"]: ("tmp_upload.png", data, part_type)}
    url = upload["url"]
    if url.startswith("http://gateway.test"):
        import io
        form = {**upload["fields"], upload["file_field"]: (io.BytesIO(data), "tmp_upload.png", part_type)}
        r = client.post(urlsplit(url).path, data=form, content_type="multipart/form-data")
        return r.status_code
    return requests.post(url, data=upload["fields"], files=files, timeout=10).status_code


def new_upload(client, headers, ctype="image/png", size=None):
    body = {"content_type": ctype, **({"size": size} if size else {})}
    r = client.post("/v1/uploads", json=body, headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["upload"]


def img2img(upload_id, seed=1):
    return {"workflow": "img2img", "params": {"prompt": "a painting", "seed": seed, "steps": 3},
            "inputs": {"image": upload_id}}


def test_img2img_with_an_uploaded_image(stack, fake):
    kind, ctx, client = stack
    h = login(client, "alice")
    up = new_upload(client, h, size=len(PNG))
    assert set(up) == {"id", "url", "fields", "file_field", "expires_at"} and up["file_field"] == "file"
    assert wx_upload(client, up, PNG) in (200, 201, 204)
    r = client.post("/v1/jobs", json=img2img(up["id"]), headers=h)
    assert r.status_code == 202, r.get_data(as_text=True)
    job_id = r.get_json()["job"]["id"]
    assert PNG in fake.uploads.values()  # the very bytes reached ComfyUI's input folder
    sent = [p for p in fake.prompts if p["prompt_id"] == job_id][0]["graph"]
    assert sent["10"]["inputs"]["image"] == f"gw_{job_id}_image.png"
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}", headers=h).get_json()["job"]["status"] == "succeeded", 20,
             "img2img did not finish")


def test_comfyui_gets_the_bytes_that_were_checked(stack, fake, db_conn):
    """The form can be posted again after the check, while the job waits in the gateway queue:
    what reaches ComfyUI later is what was checked."""
    from shared import backends
    kind, ctx, client = stack
    h = login(client, "alice")
    backends.set_slots(db_conn, fake.base_url, 1)
    fake.pause()
    first = client.post("/v1/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}}, headers=h)
    assert first.status_code == 202  # it holds the server's one slot
    up = new_upload(client, h, size=len(PNG))
    assert wx_upload(client, up, PNG) in (200, 201, 204)
    r = client.post("/v1/jobs", json={"workflow": "img2img", "params": {"prompt": "x"}, "inputs": {"image": up["id"]}},
                    headers=h)
    assert r.status_code == 202, r.get_data(as_text=True)
    job_id = r.get_json()["job"]["id"]
    assert [p["prompt_id"] for p in fake.prompts] == [first.get_json()["job"]["id"]]  # it waits
    assert wx_upload(client, up, b"X" * len(PNG)) in (200, 201, 204)  # swapped after the check (same size)
    fake.resume()
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}", headers=h).get_json()["job"]["status"] == "succeeded", 30,
             "img2img did not finish")
    assert fake.uploads[f"gw_{job_id}_image.png"] == PNG


@pytest.mark.parametrize("case", ["not_an_image", "other_user", "expired", "never_uploaded", "unknown_id"])
def test_bad_uploads_are_clear_400s(stack, db_conn, case):
    kind, ctx, client = stack
    h = login(client, "alice")
    up = new_upload(client, h)
    data = b"this is not an image at all" if case == "not_an_image" else PNG
    if case != "never_uploaded":
        assert wx_upload(client, up, data) in (200, 201, 204)
    if case == "other_user":
        h = login(client, "mallory")
    if case == "expired":
        execute(db_conn, "UPDATE uploads SET expires_at = expires_at - INTERVAL 2 DAY WHERE id=%s", (up["id"],))
    upload_id = "00000000-0000-0000-0000-000000000000" if case == "unknown_id" else up["id"]
    r = client.post("/v1/jobs", json=img2img(upload_id), headers=h)
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["code"] == "invalid_upload" and "inputs.image" in err["details"]


@pytest.mark.parametrize("body, status, code", [
    ({"content_type": "image/gif"}, 400, "invalid_params"),
    ({"content_type": "image/png", "size": 10**9}, 413, "payload_too_large"),
    ({"content_type": "image/png", "size": -1}, 400, "invalid_params"),
    ({"content_type": "image/png", "extra": 1}, 400, "invalid_params"),
])
def test_upload_request_validation(stack, body, status, code):
    _, _, client = stack
    r = client.post("/v1/uploads", json=body, headers=login(client, "alice"))
    assert r.status_code == status and r.get_json()["error"]["code"] == code


# The S3 form is checked by S3 itself (s3rver ignores POST policies; tests/shared/test_storage.py checks ours).
@pytest.mark.parametrize("stack", ["local"], indirect=True)
def test_local_upload_endpoint_enforces_size_and_signature(stack):
    kind, ctx, client = stack
    h = login(client, "alice")
    up = new_upload(client, h)
    assert wx_upload(client, up, b"\x89PNG" + b"0" * 300000) == 413
    tampered = {**up, "fields": {**up["fields"], "key": up["fields"]["key"].replace("uploads", "jobs")}}
    assert wx_upload(client, tampered, PNG) == 403


def test_the_local_upload_target_bounds_its_parser(ctx):
    """Anyone can post before the signature is checked: many parts, no boundary, deep nesting are 400s."""
    client = create_app(lambda: ctx).test_client()  # ctx: local-folder storage, the store with this endpoint
    many = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(500))
    nested = b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n" * 3000
    for content_type, body in (("multipart/form-data; boundary=b", many + b"--b--\r\n"),
                               ("multipart/form-data", b"--b\r\n\r\n--b--"),
                               ("multipart/form-data; boundary=b", nested)):
        r = client.post("/v1/files", data=body, content_type=content_type)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_upload", r.get_data(as_text=True)


MB = 1024 * 1024


def raw_form(fields: dict, file: bytes, *, closed: bool = True) -> bytes:
    """A multipart body (boundary "b") of the fields, then the file part, as wx.uploadFile orders them."""
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v.encode())
                    for k, v in fields.items())
    body += b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    return body + file + (b"\r\n--b--\r\n" if closed else b"")


def post_form(client, body: bytes):
    return client.post("/v1/files", data=body, content_type="multipart/form-data; boundary=b")


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "never_closed"])
def test_a_10_mb_form_with_a_bad_signature_is_refused_before_its_file_is_read(ctx, closed):
    """No signature is needed to make us parse: 10 MB of newlines cost bounded CPU before the 403, and a
    file part that never ends is still a 403 (its end was never looked for)."""
    client = create_app(lambda: ctx).test_client()  # ctx: local-folder storage, the store with this endpoint
    form = ctx.store.presigned_post("users/u/uploads/x.png", "image/png", 1, 10 * MB, 60)
    body = raw_form({**form["fields"], "signature": "0" * 64}, b"\n" * (10 * MB), closed=closed)
    started = time.process_time()
    r = post_form(client, body)
    spent = time.process_time() - started
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden", r.get_data(as_text=True)
    assert spent < 0.5, f"refusing a 10 MB form took {spent:.3f} s of CPU"
    assert ctx.store.head("users/u/uploads/x.png") is None


def _cut_off(body: bytes) -> bytes:
    return body[:-len(b"\r\n--b--\r\n")]


@pytest.mark.parametrize("make_body", [
    _cut_off,                                                                   # truncated in the file
    lambda body: _cut_off(body) + b"\r\n--bX\r\n",                              # a boundary that is not one
    lambda body: b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n" + body,  # a header without a colon
    lambda body: body.replace(b'name="key"\r\n\r\n', b'name="key"\r\n\r\n\xff'),  # a field not UTF-8
    lambda body: body.replace(b"Content-Type: image/png", b"Content-Transfer-Encoding: base64"),
], ids=["truncated", "false_boundary", "header_line", "not_utf8", "transfer_encoding"])
def test_truncated_or_malformed_forms_are_400s_and_store_nothing(ctx, make_body):
    client = create_app(lambda: ctx).test_client()
    form = ctx.store.presigned_post("users/u/uploads/y.png", "image/png", 1, 10 * MB, 60)
    assert post_form(client, raw_form(form["fields"], PNG)).status_code == 204  # the well-formed form is good
    ctx.store.delete("users/u/uploads/y.png")
    r = post_form(client, make_body(raw_form(form["fields"], PNG)))
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_upload", r.get_data(as_text=True)
    assert ctx.store.head("users/u/uploads/y.png") is None


def test_a_declared_size_is_pinned_in_the_form_and_the_row(stack, db_conn):
    kind, ctx, client = stack
    up = new_upload(client, login(client, "alice"), size=len(PNG))
    assert query_one(db_conn, "SELECT max_bytes FROM uploads WHERE id=%s", (up["id"],))["max_bytes"] == len(PNG)
    if kind == "s3":
        policy = json.loads(base64.b64decode(up["fields"]["policy"]))
        assert ["content-length-range", len(PNG), len(PNG)] in policy["conditions"]
    else:
        assert (up["fields"]["min_bytes"], up["fields"]["max_bytes"]) == (str(len(PNG)), str(len(PNG)))


@pytest.mark.parametrize("stack", ["local"], indirect=True)
@pytest.mark.parametrize("data, status, code", [
    (PNG + b"\0", 413, "payload_too_large"),
    (PNG[:-1], 400, "invalid_upload"),
], ids=["larger", "smaller"])
def test_a_file_of_another_size_than_declared_is_refused_and_not_stored(stack, data, status, code):
    kind, ctx, client = stack
    up = new_upload(client, login(client, "alice"), size=len(PNG))
    r = post_form(client, raw_form(up["fields"], data))
    assert r.status_code == status and r.get_json()["error"]["code"] == code, r.get_data(as_text=True)
    assert ctx.store.head(up["fields"]["key"]) is None
    assert wx_upload(client, up, PNG) == 204 and ctx.store.head(up["fields"]["key"])["bytes"] == len(PNG)


def test_local_links_serve_images_as_images_and_anything_else_as_a_download(ctx):
    client = create_app(lambda: ctx).test_client()
    for key, data, ctype, served in (("users/u/a.png", PNG, "image/png", "image/png"),
                                     ("users/u/b.svg", b"<svg onload=alert(1)>", "image/svg+xml",
                                      "application/octet-stream")):
        ctx.store.put_bytes(key, data, ctype)
        url = urlsplit(ctx.store.signed_url(key, 60)[0])
        r = client.get(url.path + "?" + url.query)
        assert r.status_code == 200 and r.data == data
        assert r.headers["Content-Type"] == served
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in r.headers["Content-Security-Policy"]
        assert ("Content-Disposition" in r.headers) == (served == "application/octet-stream")


def phone_jpeg(width: int, height: int, metadata_bytes: int) -> bytes:
    """A JPEG whose APP1 segments (XMP, depth maps, thumbnails) put the frame header past 64 KiB."""
    import struct
    out = b"\xff\xd8"
    while metadata_bytes > 0:
        n = min(metadata_bytes, 65533)
        out += b"\xff\xe1" + struct.pack(">H", n + 2) + b"x" * n
        metadata_bytes -= n
    sof = b"\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return out + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def test_a_phone_jpeg_with_large_metadata_is_measured(stack):
    from shared.uploads import check_upload
    kind, ctx, client = stack
    h = login(client, "alice")
    data = phone_jpeg(800, 600, 130_000)
    up = new_upload(client, h, ctype="image/jpeg", size=len(data))
    assert wx_upload(client, up, data, part_type="image/jpeg") in (200, 201, 204)
    user_id = client.post("/v1/auth/dev", json={"user": "alice"}).get_json()["user"]["id"]
    checked = check_upload(ctx, user_id, up["id"], "inputs.image")
    checked["file"].close()
    assert (checked["content_type"], checked["width"], checked["height"]) == ("image/jpeg", 800, 600)
