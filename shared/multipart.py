"""multipart/form-data (RFC 7578) for the local-storage upload target, with bounded work.

Anyone may post to ``POST /v1/files`` before its form's signature is checked, so
the parser only moves through the body with ``bytes.find`` and slices (the work
per byte is C's, never a Python step per line or byte), bounds the number of
parts and each part's headers, and stops at the file part as S3 does: fields
before it are the form, anything after it is ignored. The file's bytes are not
looked at until ``FilePart.data()`` is called, which the caller does only after
it has checked the fields' signature.

Delimiters and header lines end in CRLF, as every HTTP client sends them.
"""

from __future__ import annotations

import re

MAX_PARTS = 20
MAX_HEADER_BYTES = 8 * 1024     # one part's header block
MAX_HEADER_LINES = 16           # and its lines (a form part has two or three)
MAX_PADDING = 64                # spaces or tabs allowed after a boundary, before its CRLF

# A parameter of Content-Type or Content-Disposition: name=token or name="quoted string".
_PARAM_RE = re.compile(r';[ \t]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^; \t]*)')
# RFC 2046 allows 70 characters, but some clients (werkzeug's test client) use a few more.
_BOUNDARY_RE = re.compile(r"[ -~]{0,199}[!-~]")  # 1 to 200 visible characters, no trailing space
_TRANSFER_ENCODINGS = {"7bit", "8bit", "binary"}


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data form within the parser's bounds."""


class FilePart:
    """The form's file part: its headers now, its bytes (a memoryview of the body) on demand."""

    def __init__(self, body: bytes, start: int, delimiter: bytes, *, name: str, filename: str | None,
                 content_type: str):
        self.name, self.filename, self.content_type = name, filename, content_type
        self._body, self._start, self._delimiter = body, start, delimiter

    def data(self) -> memoryview:
        """The file's bytes, up to the next boundary; ``MultipartError`` if the body ends before one."""
        end = self._body.find(self._delimiter, self._start)
        if end < 0:
            raise MultipartError("the file part is not closed by a boundary (a truncated body?)")
        _after_delimiter(self._body, end + len(self._delimiter))
        return memoryview(self._body)[self._start:end]


def parse_form(content_type: str, body: bytes, *, max_parts: int = MAX_PARTS,
               max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[dict[str, str], FilePart | None]:
    """Split a multipart/form-data body into its text fields (UTF-8) and its file part, if any.

    The file part is the first part with a filename or named ``file``; parts without a
    name are skipped. Raises ``MultipartError`` for anything malformed or over the bounds.
    """
    boundary = _boundary(content_type)
    dash = b"--" + boundary
    delimiter = b"\r\n" + dash
    if body.startswith(dash):
        pos = len(dash)
    else:  # a preamble, ignored
        found = body.find(delimiter)
        if found < 0:
            raise MultipartError("the body has no boundary line")
        pos = found + len(delimiter)
    fields: dict[str, str] = {}
    for _ in range(max_parts):
        closed, line_end = _after_delimiter(body, pos)
        if closed:
            return fields, None
        headers_end = body.find(b"\r\n\r\n", line_end, line_end + max_header_bytes + 4)
        if headers_end < 0:
            raise MultipartError(f"a part's headers are over {max_header_bytes} bytes or never end")
        headers = _headers(body[line_end + 2:headers_end])
        start = headers_end + 4
        if headers.get("content-transfer-encoding", "binary").lower() not in _TRANSFER_ENCODINGS:
            raise MultipartError("parts must not have a Content-Transfer-Encoding")
        disposition, params = _split_params(headers.get("content-disposition", ""))
        name = params.get("name") if disposition.lower() == "form-data" else None
        if name and ("filename" in params or "filename*" in params or name == "file"):
            content_type = _split_params(headers.get("content-type", "text/plain"))[0].lower()
            return fields, FilePart(body, start, delimiter, name=name, content_type=content_type,
                                    filename=params.get("filename", params.get("filename*")))
        end = body.find(delimiter, start)
        if end < 0:
            raise MultipartError("a part is not closed by a boundary (a truncated body?)")
        if name:
            try:
                fields[name] = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise MultipartError(f"the field {name!r} is not UTF-8 text") from None
        pos = end + len(delimiter)
    if _after_delimiter(body, pos)[0]:
        return fields, None
    raise MultipartError(f"a form has at most {max_parts} parts")


def _boundary(content_type: str) -> bytes:
    mime, params = _split_params(content_type[:MAX_HEADER_BYTES])
    if mime.lower() != "multipart/form-data":
        raise MultipartError("the body must be multipart/form-data")
    boundary = params.get("boundary", "")
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise MultipartError("the Content-Type needs a boundary of 1 to 200 characters")
    return boundary.encode("ascii")


def _after_delimiter(body: bytes, pos: int) -> tuple[bool, int]:
    """What follows a boundary at ``pos``: (True, _) if it closes the form, else (False, its CRLF)."""
    if body.startswith(b"--", pos):
        return True, pos + 2
    line_end = body.find(b"\r\n", pos, pos + MAX_PADDING + 2)
    if line_end < 0 or body[pos:line_end].strip(b" \t"):
        raise MultipartError("a boundary line is malformed or cut off")
    return False, line_end


def _headers(block: bytes) -> dict[str, str]:
    """A part's header lines as {lower-case name: value}."""
    lines = block.split(b"\r\n", MAX_HEADER_LINES) if block else []
    if len(lines) > MAX_HEADER_LINES:
        raise MultipartError(f"a part has more than {MAX_HEADER_LINES} header lines")
    headers = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or not name.isascii():
            raise MultipartError("a part has a malformed header line")
        headers[name.decode("ascii").lower()] = value.strip(b" \t").decode("utf-8", "replace")
    return headers


def _split_params(value: str) -> tuple[str, dict[str, str]]:
    """``type; a=1; b="x"`` → ("type", {"a": "1", "b": "x"}), parameter names in lower case."""
    head = value.partition(";")[0]
    params = {}
    for m in _PARAM_RE.finditer(value, len(head)):
        v = m.group(2)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith('"') else v
    return head.strip(), params
