"""A small client for one ComfyUI server's HTTP API.

Callers get plain values, never raw responses. Every call has a timeout.
Exceptions::

    ComfyError
     ├── ComfyUnavailableError   refused, reset, timed out, 5xx: try later / elsewhere
     │    ├── ComfyUnreachableError  no connection was made: the request certainly never arrived
     │    └── ComfyTimeoutError  the request may have reached ComfyUI (read timeout)
     ├── ComfyRejectedError      400 on /prompt: the graph is invalid (``error``, ``node_errors``)
     └── ComfyProtocolError      an answer that is not what ComfyUI says (HTML, bad JSON, bad shape)
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

log = logging.getLogger(__name__)


class ComfyError(Exception):
    """Any failure talking to ComfyUI."""


class ComfyUnavailableError(ComfyError):
    """ComfyUI did not answer usefully: refused, reset, timed out or 5xx."""


class ComfyUnreachableError(ComfyUnavailableError):
    """No connection could be made (refused, unresolvable, connect timeout): nothing was sent."""


class ComfyTimeoutError(ComfyUnavailableError):
    """The request was sent but no answer came in time: it may have been accepted."""


class ComfyRejectedError(ComfyError):
    """ComfyUI refused the prompt (HTTP 400)."""

    def __init__(self, message: str, error: dict, node_errors: dict):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


class ComfyProtocolError(ComfyError):
    """ComfyUI answered something that is not its protocol."""


class ComfyNotFoundError(ComfyError):
    """The file or job asked for does not exist on the server (404)."""


@dataclass(frozen=True)
class QueueEntry:
    number: int
    prompt_id: str
    client_id: str | None


def ws_url(base_url: str, client_id: str) -> str:
    """The WebSocket URL of a server for one clientId."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", f"clientId={client_id}", ""))


def never_connected(exc: requests.ConnectionError) -> bool:
    """True when requests failed before a connection existed (so nothing was sent)."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


class ComfyClient:
    """One ComfyUI server, through a requests session."""

    def __init__(self, session: requests.Session, base_url: str, *, timeout: float = 10.0):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, *, ok=(200,), **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.base_url + path, **kwargs)
        except requests.ConnectTimeout as e:
            raise ComfyUnreachableError(f"{method} {path}: connect timeout") from e
        except requests.Timeout as e:
            raise ComfyTimeoutError(f"{method} {path}: no answer within {kwargs['timeout']}s") from e
        except requests.ConnectionError as e:
            if never_connected(e):
                raise ComfyUnreachableError(f"{method} {path}: connection refused") from e
            raise ComfyUnavailableError(f"{method} {path}: {type(e).__name__}") from e
        except requests.RequestException as e:
            raise ComfyUnavailableError(f"{method} {path}: {type(e).__name__}") from e
        if resp.status_code >= 500:
            resp.close()
            raise ComfyUnavailableError(f"{method} {path}: HTTP {resp.status_code}")
        if resp.status_code not in ok and resp.status_code not in (400, 404):
            resp.close()
            raise ComfyProtocolError(f"{method} {path}: unexpected HTTP {resp.status_code}")
        return resp

    @staticmethod
    def _json(resp: requests.Response, what: str):
        try:
            return resp.json()
        except ValueError:
            ctype = resp.headers.get("Content-Type", "")
            raise ComfyProtocolError(f"{what}: not JSON (Content-Type {ctype!r})") from None

    def submit(self, graph: dict, *, client_id: str, prompt_id: str, extra_data: dict | None = None) -> int:
        """Queue a prompt under our chosen id; return ComfyUI's queue number.

        ``extra_data`` is kept by ComfyUI with the prompt and shown in its history entry.
        """
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        resp = self._request("POST", "/prompt", json=body)
        body = self._json(resp, "POST /prompt")
        if resp.status_code == 400:
            error = body.get("error") if isinstance(body, dict) else None
            error = error if isinstance(error, dict) else {"message": str(error)}
            node_errors = body.get("node_errors") if isinstance(body, dict) else None
            raise ComfyRejectedError(error.get("message") or "invalid prompt", error,
                                     node_errors if isinstance(node_errors, dict) else {})
        if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("number"), int):
            raise ComfyProtocolError(f"POST /prompt: unexpected answer (HTTP {resp.status_code})")
        if body.get("prompt_id") != prompt_id:
            raise ComfyProtocolError("POST /prompt: the server did not keep our prompt_id")
        return body["number"]

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of a prompt, or None when the server has none."""
        resp = self._request("GET", f"/history/{prompt_id}")
        body = self._json(resp, "GET /history")
        if resp.status_code != 200 or not isinstance(body, dict):
            raise ComfyProtocolError("GET /history: unexpected answer")
        entry = body.get(prompt_id)
        if entry is not None and not isinstance(entry, dict):
            raise ComfyProtocolError("GET /history: entry is not an object")
        return entry

    def queue(self) -> tuple[list[QueueEntry], list[QueueEntry]]:
        """(running, pending) entries of the server's queue, ordered by number."""
        resp = self._request("GET", "/queue")
        body = self._json(resp, "GET /queue")
        if not isinstance(body, dict):
            raise ComfyProtocolError("GET /queue: not an object")

        def entries(items) -> list[QueueEntry]:
            out = []
            for item in items or []:
                if not isinstance(item, list) or len(item) < 2:
                    raise ComfyProtocolError("GET /queue: malformed entry")
                extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
                out.append(QueueEntry(int(item[0]), str(item[1]), extra.get("client_id")))
            return sorted(out, key=lambda e: e.number)
        return entries(body.get("queue_running")), entries(body.get("queue_pending"))

    def job(self, prompt_id: str) -> dict | None:
        """ComfyUI's /api/jobs/{id} record, or None when it does not know the id."""
        resp = self._request("GET", f"/api/jobs/{prompt_id}")
        if resp.status_code == 404:
            resp.close()
            return None
        body = self._json(resp, "GET /api/jobs")
        if not isinstance(body, dict):
            raise ComfyProtocolError("GET /api/jobs: not an object")
        return body

    def object_info(self) -> dict:
        """Every node class the server has, with its inputs (GET /object_info)."""
        resp = self._request("GET", "/object_info")
        body = self._json(resp, "GET /object_info")
        if not isinstance(body, dict):
            raise ComfyProtocolError("GET /object_info: not an object")
        return body

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt a prompt if it is the one running."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id}).close()

    def delete(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts from the queue."""
        self._request("POST", "/queue", json={"delete": list(prompt_ids)}).close()

    def upload_image(self, name: str, fileobj, content_type: str) -> str:
        """Upload an input image; return the name ComfyUI stored it under."""
        resp = self._request("POST", "/upload/image", files={"image": (name, fileobj, content_type)},
                             data={"overwrite": "true"})
        body = self._json(resp, "POST /upload/image")
        if resp.status_code != 200 or not isinstance(body, dict) or not body.get("name"):
            raise ComfyProtocolError(f"POST /upload/image: unexpected answer (HTTP {resp.status_code})")
        sub = body.get("subfolder") or ""
        return f"{sub}/{body['name']}" if sub else body["name"]

    def system_stats(self) -> dict:
        return self._json(self._request("GET", "/system_stats"), "GET /system_stats")

    @contextmanager
    def view(self, filename: str, subfolder: str, type_: str, *, timeout: float | None = None):
        """Stream one file from /view: yields (raw file object, content type, length or None)."""
        resp = self._request("GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type_},
                             stream=True, timeout=timeout or self.timeout)
        try:
            if resp.status_code == 404:
                raise ComfyNotFoundError(f"/view {filename}: not found")
            if resp.status_code != 200:
                raise ComfyProtocolError(f"/view {filename}: HTTP {resp.status_code}")
            length = resp.headers.get("Content-Length")
            resp.raw.decode_content = True
            yield resp.raw, resp.headers.get("Content-Type", "application/octet-stream"), \
                int(length) if length and length.isdigit() else None
        finally:
            resp.close()
