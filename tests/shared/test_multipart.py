"""multipart/form-data as real clients send it, malformed forms, and bounded work on hostile ones."""

from __future__ import annotations

import io
import time

import pytest
from urllib3 import encode_multipart_formdata
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from shared.multipart import MAX_HEADER_BYTES, MultipartError, parse_form

CT = "multipart/form-data; boundary=b"
MB = 1024 * 1024


def part(name: str, value: bytes, *headers: bytes) -> bytes:
    disposition = b'Content-Disposition: form-data; name="%s"' % name.encode()
    return b"--b\r\n" + b"\r\n".join((disposition, *headers)) + b"\r\n\r\n" + value + b"\r\n"


FILE = part("file", b"\x89PNG bytes", b"Content-Type: image/png")


def test_the_forms_of_requests_and_werkzeug_are_read():
    """requests (urllib3) is what tests post to S3 with, werkzeug's client what they post to /v1/files with."""
    body, content_type = encode_multipart_formdata(
        [("key", "users/u/ä.png"), ("policy", "p"), ("file", ("tmp.png", b"\x89PNG\r\n--x", "image/png"))])
    fields, file = parse_form(content_type, body)
    assert fields == {"key": "users/u/ä.png", "policy": "p"}
    assert (file.name, file.filename, file.content_type, bytes(file.data())) == (
        "file", "tmp.png", "image/png", b"\x89PNG\r\n--x")
    boundary, body = encode_multipart(MultiDict(
        [("key", "k"), ("file", FileStorage(io.BytesIO(b"abc"), "x.jpg", content_type="image/jpeg"))]))
    fields, file = parse_form(f"multipart/form-data; boundary={boundary}", body)
    assert fields == {"key": "k"} and (file.content_type, bytes(file.data())) == ("image/jpeg", b"abc")


def test_the_file_part_is_a_view_of_the_body_and_what_follows_it_is_ignored():
    body = part("key", b"k") + FILE + part("late", b"ignored, as S3 does") + b"--b--\r\n"
    fields, file = parse_form(CT, body)
    assert fields == {"key": "k"}
    data = file.data()
    assert isinstance(data, memoryview) and data.obj is body and bytes(data) == b"\x89PNG bytes"


def test_the_file_part_is_read_only_when_asked_for():
    """A body cut inside the file part parses; only data() finds out, after the signature check."""
    fields, file = parse_form(CT, part("key", b"k") + b"--b\r\nContent-Disposition: form-data; name=\"file\"; "
                                  b"filename=\"a.png\"\r\n\r\n" + b"\x89PNG cut off")
    assert fields == {"key": "k"} and file.content_type == "text/plain"
    with pytest.raises(MultipartError, match="not closed"):
        file.data()


@pytest.mark.parametrize("headers, name, filename", [
    (b'Content-Disposition: form-data; name="upload"; filename="a \\"b\\"; c.png"', "upload", 'a "b"; c.png'),
    (b"content-disposition:form-data;name=file", "file", None),
    (b'Content-Disposition: form-data; name="x"; filename*=UTF-8\'\'%C3%A4.png', "x", "UTF-8''%C3%A4.png"),
])
def test_a_part_with_a_filename_or_named_file_is_the_file(headers, name, filename):
    fields, file = parse_form(CT, b"--b\r\n" + headers + b"\r\n\r\nxyz\r\n--b--")
    assert fields == {} and (file.name, file.filename, bytes(file.data())) == (name, filename, b"xyz")


def test_a_form_without_a_file_and_parts_without_a_name():
    body = (b"preamble\r\n" + part("a", "ü".encode()) + b"--b\r\nContent-Type: text/plain\r\n\r\nno name\r\n"
            + part("b", b"") + b"--b--\r\nepilogue")
    assert parse_form(CT, body) == ({"a": "ü", "b": ""}, None)


@pytest.mark.parametrize("content_type, body, message", [
    ("application/x-www-form-urlencoded", b"a=b", "multipart/form-data"),
    ("multipart/form-data", FILE + b"--b--", "boundary"),
    ("multipart/form-data; boundary=" + "x" * 201, FILE, "boundary"),
    (CT, b"no boundary line at all", "no boundary line"),
    (CT, b"--bc\r\n" + FILE[4:], "boundary line"),
    (CT, part("key", b"k")[:-2], "not closed"),                                   # truncated in a field
    (CT, part("key", b"k") + b"--b", "boundary line"),                             # truncated after a field
    (CT, b"--b\r\nContent-Disposition: form-data; name=\"key\"", "headers"),       # truncated in the headers
    (CT, b"--b\r\n" + b"X-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\nx\r\n--b--", "headers"),
    (CT, b"--b\r\n" + b"X: y\r\n" * 20 + b"\r\nx\r\n--b--", "header lines"),
    (CT, b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--", "header line"),
    (CT, b"--b\r\n Content-Disposition: form-data; name=a\r\n\r\nx\r\n--b--", "header line"),
    (CT, part("key", b"\xff\xfe") + b"--b--", "not UTF-8"),
    (CT, part("file", b"iVBORw0K", b"Content-Transfer-Encoding: base64") + b"--b--", "Transfer-Encoding"),
    (CT, part("key", b"k") * 21 + b"--b--", "at most 20 parts"),
], ids=["not_multipart", "no_boundary", "long_boundary", "no_boundary_line", "other_boundary", "cut_in_field",
        "cut_after_field", "cut_in_headers", "long_headers", "many_header_lines", "no_colon", "folded_header",
        "not_utf8", "transfer_encoding", "many_parts"])
def test_malformed_forms_are_refused(content_type, body, message):
    with pytest.raises(MultipartError, match=message):
        parse_form(content_type, body)


@pytest.mark.parametrize("body, expected", [
    # the file part: only its end is looked for, and only when asked
    (FILE[:-len(b"\x89PNG bytes\r\n")] + b"\n" * (10 * MB) + b"\r\n--b--", ({}, 10 * MB)),
    (part("key", b"\n" * (10 * MB)) + b"--b--", ({"key": 10 * MB}, None)),             # a field
    (part("key", b"\r\n--" * (10 * MB // 4)) + b"--b--", ({"key": 10 * MB}, None)),   # near-boundaries
    (b"\n" * (10 * MB) + b"\r\n" + FILE + b"--b--", ({}, 10)),                        # the preamble
    ((b"--b\r\n\r\n" + b"\n" * (MB // 2) + b"\r\n") * 20 + b"--b--", ({}, None)),   # 20 parts
    (b"--b\r\n" + b"\n" * (10 * MB), "headers"),                                    # the headers
], ids=["file", "field", "near_boundaries", "preamble", "parts", "headers"])
def test_10_mb_of_newlines_cost_bounded_cpu(body, expected):
    started = time.process_time()
    try:
        fields, file = parse_form(CT, body)
        found = {k: len(v) for k, v in fields.items()}, file and len(file.data())
    except MultipartError as e:
        found = "headers" if "headers" in str(e) else str(e)
    spent = time.process_time() - started
    assert found == expected
    assert spent < 0.5, f"parsing 10 MB took {spent:.3f} s of CPU"
