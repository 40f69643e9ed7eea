"""One ComfyUI server's socket: own it, connect, read, dispatch, reconnect.

Each connection uses a fresh clientId (never reuse one an older socket may
still hold: see the ComfyUI facts in tests/fixtures/comfyui/README.md) and
publishes it on the backend row, so new submissions are routed to this socket.
Jobs submitted under an earlier id get no more events; reconciliation tracks
them by polling until they are final.
Ownership of a backend is a lease in MySQL: one listener at a time serves it,
another takes over when the lease runs out. While the server cannot be reached
the owner still enforces the jobs' time limits, so no job stays active forever.
Each backend finalizes on its own small thread pool: a slow server cannot
starve another's finalizations.

The pool: on connect, on `gateway backends refresh` and every
CAPABILITIES_REFRESH_S the owner reads the server's /object_info and stores
what it offers. When a job of its server ends (its slot frees) and after each
reconciliation it dispatches waiting jobs, off the socket loop; one sweep per
process does so every DISPATCH_SWEEP_S as a safety net. When the server cannot
be reached at all for RELEASE_AFTER_S, the jobs it held go back to the gateway
queue to run elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import websocket

from listener import protocol
from listener.finalize import HistoryPendingError, finalize
from listener.moderation_sender import ModerationSender
from listener.outbox_sender import OutboxSender, SubscribeSender
from listener.reconcile import enforce_timeouts, reconcile, release_held
from listener.tracker import Tracker
from shared import backends, jobs, retention
from shared.comfy import ComfyError, ws_url
from shared.errors import DatabaseUnavailableError
from shared.logs import JOB_ID
from shared.pool import capabilities
from shared.pool.dispatch import Kicker, sweep

log = logging.getLogger(__name__)

FINALIZE_THREADS = 4  # per backend
FIRST_DELAY_S = 0.5   # the reconnect backoff starts here and doubles up to RECONNECT_MAX_S
STABLE_S = 5.0        # a connection up this long counts as established: the backoff starts over
REQUEUE_SETTLE_S = 3.0  # a job missing from a reachable server's queue and history this long goes back to the queue
RELEASE_AFTER_S = 5.0   # a server unreachable (socket and HTTP) this long has its held jobs sent elsewhere


class LeaseLostError(Exception):
    """Another listener owns this backend now."""


class BackendWorker(threading.Thread):
    def __init__(self, ctx, url: str, owner: str, stop: threading.Event):
        super().__init__(name=f"backend {url}", daemon=True)
        self.ctx = ctx
        self.cfg = ctx.config
        self.url = url
        self.owner = owner
        self.stopping = stop
        self.executor = ThreadPoolExecutor(max_workers=FINALIZE_THREADS, thread_name_prefix=f"finalize {url}")
        self.backoff = FIRST_DELAY_S
        self.stable_s = STABLE_S
        self.lease_renewed = 0.0
        self.unreachable_since: float | None = None  # when the last run of failed connects began
        self.comfy = ctx.comfy(url)
        self.backend_id: int | None = None
        self.client_id: str | None = None
        self.ws = None
        self._finalizing: set[str] = set()
        self._missing: dict[str, float] = {}
        self._history_failing: dict[str, float] = {}
        self._final_lock = threading.Lock()
        self.stats = {"frames": 0, "ignored": 0, "reconnects": 0, "event_errors": 0}
        self.tracker: Tracker | None = None
        self.capabilities_read = 0.0
        self.released = False  # whether the held jobs went back to the queue during this outage
        self.kick_dispatch = Kicker(ctx, self.executor, stop)  # dispatch soon, off the socket loop

    def tracker_unknown_ids(self) -> int:
        """How many unknown prompt ids the current tracker remembers (bounded)."""
        return len(self.tracker.unknown) if self.tracker else 0

    # -- the outer loop: own, connect, serve, back off ------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.backend_id is None:
                    with self.ctx.db.connection() as conn:
                        self.backend_id = backends.ensure_backend(conn, self.url)
                if not self._renew_lease():
                    self.unreachable_since = None  # not ours: whatever we saw of the server is another's now
                    self.released = False
                    self.stopping.wait(self.cfg.lease_s / 3)
                    continue
                self._serve()
            except LeaseLostError:
                log.warning("%s: another listener took over", self.url)
            except DatabaseUnavailableError:
                log.warning("%s: database unavailable; retrying", self.url)
            except (websocket.WebSocketException, OSError, ComfyError) as e:
                log.warning("%s: connection problem: %s", self.url, e)
                if self.client_id is None and self.backend_id is not None:  # no socket: the server is unreachable
                    if self.unreachable_since is None:
                        self.unreachable_since = time.monotonic()
                    self._enforce_unreachable()
            except Exception:
                log.exception("%s: unexpected error in the listener loop", self.url)
            finally:
                self._disconnect()
            if not self.stopping.is_set():
                self.stats["reconnects"] += 1
                # Until its jobs are released, look again often enough to release them in time.
                self.stopping.wait(self.backoff if self.released else min(self.backoff, RELEASE_AFTER_S / 2))
                self.backoff = min(self.backoff * 2, self.cfg.reconnect_max_s)
        self._release()

    def _renew_lease(self) -> bool:
        with self.ctx.db.connection() as conn:
            backends.heartbeat(conn, self.backend_id, self.owner)  # owner or standby: alive (/healthz)
            if backends.acquire_lease(conn, self.backend_id, self.owner, self.cfg.lease_s):
                self.lease_renewed = time.monotonic()
                return True
            return False

    def _keep_lease(self) -> None:
        """Renew the lease if a third of it has passed (called between jobs of long passes too)."""
        if time.monotonic() - self.lease_renewed >= self.cfg.lease_s / 3 and not self._renew_lease():
            raise LeaseLostError()

    def _release(self) -> None:
        try:
            with self.ctx.db.connection() as conn:
                backends.release_lease(conn, self.backend_id, self.owner)
                backends.forget_listener(conn, self.backend_id, self.owner)
        except Exception as e:
            log.warning("%s: could not release the lease: %s", self.url, e)

    def _disconnect(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception:
                pass
        if self.client_id and self.backend_id is not None:
            self.unreachable_since = time.monotonic()  # until a reconnect succeeds (a reconnect may take a while)
            try:
                with self.ctx.db.connection() as conn:
                    backends.set_connected(conn, self.backend_id, self.owner, None)
            except Exception:
                pass
        self.client_id = None

    # -- one connection ----------------------------------------------------------------
    def _serve(self) -> None:
        client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(ws_url(self.url, client_id), timeout=self.cfg.comfyui_timeout,
                                              enable_multithread=True)
        self.ws.send('{"type": "feature_flags", "data": {"supports_preview_metadata": true}}')
        self._read_capabilities()  # before jobs can be routed here
        self.client_id = client_id
        self.unreachable_since = None
        self.released = False
        with self.ctx.db.connection() as conn:
            if not backends.set_connected(conn, self.backend_id, self.owner, client_id):
                raise LeaseLostError()
        log.info("%s: connected as %s", self.url, client_id)
        tracker = self.tracker = Tracker(self.ctx, self.backend_id, self.url, self._schedule_finalize)
        self._reconcile()
        self.ws.settimeout(0.5)
        now = time.monotonic()
        connected_at = last_frame = now
        # Jobs found missing on connect (the server restarted) are looked at again once they have settled.
        last_reconcile = now - self.cfg.reconcile_interval_s + REQUEUE_SETTLE_S if self._missing else now
        while not self.stopping.is_set():
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                opcode, data = None, None
            now = time.monotonic()
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                last_frame = now
                self.stats["frames"] += 1
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    data = data.decode("utf-8", errors="replace")
                event = protocol.parse_frame(data)
                if isinstance(event, protocol.Ignored):
                    self.stats["ignored"] += 1
                    log.debug("%s: skipped a frame: %s", self.url, event.reason)
                else:
                    self._dispatch(tracker, event)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                raise websocket.WebSocketConnectionClosedException("closed by the server")
            if self.backoff != FIRST_DELAY_S and now - connected_at >= self.stable_s:
                self.backoff = FIRST_DELAY_S  # the connection held: the next drop is retried quickly
            if now - self.lease_renewed >= self.cfg.lease_s / 3:
                previous = self.lease_renewed
                self._keep_lease()
                with self.ctx.db.connection() as conn:
                    if last_frame > previous:  # /healthz's last_event_at, a few writes a minute at most
                        backends.touch(conn, self.backend_id)
                    refresh = backends.refresh_requested(conn, self.backend_id)
                if refresh or now - self.capabilities_read >= self.cfg.capabilities_refresh_s:
                    self._read_capabilities()
            if now - last_reconcile >= self.cfg.reconcile_interval_s:
                self._reconcile()
                last_reconcile = now
                if self._missing:  # settle them as soon as they may be judged
                    last_reconcile = now - self.cfg.reconcile_interval_s + REQUEUE_SETTLE_S
            if now - last_frame >= self.cfg.watchdog_s and self._has_running_work():
                raise websocket.WebSocketTimeoutException(f"no frame for {self.cfg.watchdog_s:.0f}s while busy")

    def _dispatch(self, tracker: Tracker, event) -> None:
        try:
            tracker.handle(event)
        except DatabaseUnavailableError:
            # The socket stays; the missed write is recovered by reconciliation.
            log.warning("%s: database unavailable while applying %s", self.url, type(event).__name__)
        except Exception:
            # One event that cannot be applied (a value the database refuses, say) costs that event, not the
            # socket: a new socket means a new clientId, and the running jobs would go silent.
            self.stats["event_errors"] += 1
            log.exception("%s: could not apply %s of prompt %s; skipped", self.url, type(event).__name__,
                          getattr(event, "prompt_id", None))

    def _has_running_work(self) -> bool:
        """Whether a job submitted on this socket is running (jobs of older sockets send no frames here)."""
        with self.ctx.db.connection() as conn:
            return any(j["client_id"] == self.client_id
                       for j in jobs.jobs_on_backend(conn, self.backend_id, ("running",)))

    def _read_capabilities(self) -> None:
        """Store what the server offers now (node classes, choices of the workflows' combo inputs)."""
        needed = capabilities.workflow_classes(self.ctx.workflows)
        caps = capabilities.from_object_info(self.comfy.object_info(), needed)
        with self.ctx.db.connection() as conn:
            if not backends.store_capabilities(conn, self.backend_id, self.owner, caps, capabilities.digest(caps)):
                raise LeaseLostError()
        self.capabilities_read = time.monotonic()
        log.info("%s: capabilities read: %d node classes, %d choice lists", self.url, len(caps["classes"]),
                 len(caps["choices"]))

    def _reconcile(self) -> None:
        backend = {"id": self.backend_id, "url": self.url}
        try:
            reconcile(self.ctx, backend, self.comfy,
                      submit_grace_s=2 * self.cfg.comfyui_timeout + 5, finalize_job=self._finalize_entry,
                      missing=self._missing, settle_s=min(self.cfg.history_retry_s, REQUEUE_SETTLE_S),
                      tick=self._keep_lease)
        except ComfyError as e:  # /queue failed: no job can be judged this time
            log.warning("%s: reconciliation skipped: %s", self.url, e)
        self._enforce_timeouts(self.comfy)  # ComfyUI errors about one job are handled per job inside
        self.kick_dispatch()

    def _enforce_timeouts(self, comfy) -> None:
        enforce_timeouts(self.ctx, {"id": self.backend_id, "url": self.url}, comfy,
                         queue_timeout_s=self.cfg.queue_timeout_s, default_run_timeout_s=self.cfg.run_timeout_s,
                         busy=self._is_finalizing, finalize_job=self._finalize_entry,
                         history_grace_s=self.cfg.history_retry_s, tick=self._keep_lease,
                         history_failing=self._history_failing)

    def _enforce_unreachable(self) -> None:
        """Keep the jobs settling while no socket can be opened.

        If ComfyUI still answers HTTP, reconcile and enforce limits through it as usual.
        If not, jobs are failed in the database alone only once the server has been
        unreachable for longer than WATCHDOG_S: a short outage must not fail jobs
        whose history (read when it is back) says they succeeded.
        """
        try:
            self._keep_lease()  # connecting took a while: still ours?
            if self._answers():
                self.unreachable_since = None  # HTTP answers: the grace starts over when it stops answering
                self._reconcile()
                return
            unreachable_s = time.monotonic() - (self.unreachable_since or time.monotonic())
            if not self.released and unreachable_s >= RELEASE_AFTER_S:
                # Gone, not a blip: what it held runs elsewhere (prompts it still has are taken off if it
                # comes back, and a run that finished there anyway is not recorded). Done once it all went
                # through; a failure halfway (the database) is retried on the next failed connect.
                if release_held(self.ctx, {"id": self.backend_id, "url": self.url}):
                    self.kick_dispatch()
                self.released = True
            if unreachable_s >= self.cfg.watchdog_s:
                self._enforce_timeouts(None)
        except LeaseLostError:
            self.unreachable_since = None
            log.warning("%s: another listener took over", self.url)
        except DatabaseUnavailableError:
            log.warning("%s: database unavailable; time limits not checked", self.url)
        except Exception:
            log.exception("%s: time limits not checked", self.url)

    def _answers(self) -> bool:
        try:
            self.comfy.queue()
            return True
        except ComfyError:
            return False

    # -- finalization, off the socket loop ---------------------------------------------------
    def _schedule_finalize(self, job_id: str, hint: dict | None = None, entry: dict | None = None) -> None:
        with self._final_lock:
            if job_id in self._finalizing:
                return
            self._finalizing.add(job_id)
        self.executor.submit(self._run_finalize, job_id, entry, hint)

    def _finalize_entry(self, job_id: str, entry: dict) -> None:
        self._schedule_finalize(job_id, None, entry)

    def _is_finalizing(self, job_id: str) -> bool:
        with self._final_lock:
            return job_id in self._finalizing

    def _run_finalize(self, job_id: str, entry: dict | None, hint: dict | None) -> None:
        token = JOB_ID.set(job_id)  # every line logged while it is finished names the job
        try:
            finalize(self.ctx, job_id, comfy=self.comfy, backend_url=self.url, entry=entry, hint=hint,
                     copy_deadline_s=self.cfg.output_copy_deadline_s, backend_id=self.backend_id)
            self.kick_dispatch()  # its slot is free
        except HistoryPendingError:
            log.warning("job %s: no history yet; reconciliation will retry", job_id)
        except Exception:
            log.exception("job %s: finalization failed; reconciliation will retry", job_id)
        finally:
            JOB_ID.reset(token)
            with self._final_lock:
                self._finalizing.discard(job_id)


class Listener:
    """Serves every backend in COMFYUI_URLS, one thread each."""

    def __init__(self, ctx, *, owner: str | None = None):
        import os
        import socket
        self.ctx = ctx
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        self.workers = [BackendWorker(ctx, url, self.owner, self.stop_event) for url in ctx.config.comfyui_urls]
        self.sweeper = threading.Thread(target=self._sweep, name="gateway queue sweep", daemon=True)
        self.outbox = OutboxSender(ctx, self.stop_event)  # webhooks (listener/outbox_sender.py)
        self.pushes = SubscribeSender(ctx, self.stop_event)  # WeChat subscribe messages (the same module)
        self.moderation = ModerationSender(ctx, self.stop_event)  # image verdicts (listener/moderation_sender.py)
        # `gateway cleanup` every hour when a RETENTION_* setting is set (shared/retention/)
        self.cleanup = retention.Hourly(ctx, self.stop_event) if retention.scheduled(ctx.config) else None

    def start(self) -> None:
        for w in self.workers:
            w.start()
        self.sweeper.start()
        self.outbox.start()
        self.pushes.start()
        self.moderation.start()
        if self.cleanup:
            self.cleanup.start()

    def _sweep(self) -> None:
        """Every DISPATCH_SWEEP_S: time out jobs waiting too long, then dispatch (a safety net:
        jobs normally go out at submit or when a slot frees). Runs whether or not any server is connected."""
        while not self.stop_event.wait(self.ctx.config.dispatch_sweep_s):
            try:
                sweep(self.ctx)
            except Exception as e:
                log.warning("gateway queue sweep failed: %s (the next one retries)", e)

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.sweeper.ident is not None:
            self.sweeper.join(timeout)
        self.outbox.join(timeout)
        self.pushes.join(timeout)
        self.moderation.stop(timeout)
        if self.cleanup:
            self.cleanup.join(timeout)
        for w in self.workers:
            w.join(timeout)
        for w in self.workers:
            w.executor.shutdown(wait=True, cancel_futures=False)

    def run_forever(self) -> None:
        import signal
        self.start()
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        try:
            while not self.stop_event.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
