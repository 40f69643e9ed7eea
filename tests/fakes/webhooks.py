"""A fake webhook receiver on loopback: the operator's backend as Standard Webhooks describes it.

    with FakeReceiver(secret="whsec_...") as rx:
        ... point WEBHOOK_URL at rx.url ...
        rx.fail_next(2, status=503)     # the next two deliveries answer 503
        rx.hang_next(1, seconds=3)      # the next one answers only after 3 s (past the sender's timeout)
        rx.down(); rx.up()              # stop listening on the port, then listen on it again
        FakeReceiver(secret, answer=lambda event: {"suggest": "pass"})  # answers with a JSON body

``delay`` holds every answer that long. Every POST is kept in ``deliveries`` (headers, raw body, parsed JSON, whether its signature
verified with ``secret``, the status answered). ``accepted`` are those answered 2xx; like a
real receiver it answers 2xx to a webhook-id it accepted before (deduplication is the
receiver's job: delivery is at least once), and ``accepted_ids`` keeps each id once.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.webhooks import verify


@dataclass
class Delivery:
    headers: dict
    body: bytes
    event: dict | None
    verified: bool
    status: int
    at: float

    @property
    def id(self) -> str | None:
        return self.headers.get("webhook-id")

    @property
    def type(self) -> str | None:
        return (self.event or {}).get("type")


@dataclass
class FakeReceiver:
    secret: str
    path: str = "/hooks"
    delay: float = 0.0  # seconds before every answer
    answer: object = None  # answer(event) -> a JSON object sent back with 200 (the moderation webhook's verdict)
    deliveries: list = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._forced: list = []  # ("status", n) or ("hang", seconds), first-in first-out
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # -- control --------------------------------------------------------------------------------

    def fail_next(self, times: int = 1, status: int = 500) -> None:
        with self._lock:
            self._forced.extend([("status", status)] * times)

    def hang_next(self, times: int = 1, seconds: float = 5.0) -> None:
        with self._lock:
            self._forced.extend([("hang", seconds)] * times)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}{self.path}"

    @property
    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    @property
    def accepted_ids(self) -> list[str]:
        seen: list[str] = []
        for d in self.accepted:
            if d.id not in seen:
                seen.append(d.id)
        return seen

    def of_type(self, event_type: str) -> list[Delivery]:
        return [d for d in self.accepted if d.type == event_type]

    def start(self) -> "FakeReceiver":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                fake._handle(self)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass  # a sender that gave up waiting (the timeout tests) is not an error here

        self._stopping.clear()
        self._server = Server(("127.0.0.1", self._port), Handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging answers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def down(self) -> None:
        """Stop listening: connections are refused until ``up()``."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    def __enter__(self) -> "FakeReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the endpoint ------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        with self._lock:
            forced = self._forced.pop(0) if self._forced else None
            known = any(d.id == headers.get("webhook-id") and 200 <= d.status < 300 for d in self.deliveries)
        wait = forced[1] if forced and forced[0] == "hang" else self.delay
        if wait and self._stopping.wait(wait):
            return
        verified = verify(self.secret, headers, body)
        if h.path != self.path:
            status = 404
        elif forced and forced[0] == "status":
            status = forced[1]
        elif not verified:
            status = 401
        else:
            status = 200 if known else 204
        out = b""
        if 200 <= status < 300 and self.answer is not None:
            status, out = 200, json.dumps(self.answer(event)).encode()
        with self._lock:
            self.deliveries.append(Delivery(headers, body, event, verified, status, time.monotonic()))
        try:
            h.send_response(status)
            h.send_header("Content-Length", str(len(out)))
            if out:
                h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(out)
        except OSError:
            pass  # the sender gave up
