"""Apply ComfyUI events to job rows: one small function per event type.

The tracker belongs to one backend connection. It keeps state only for the
prompt that is running (and a bounded set of ids it does not know), so nothing
keyed by prompt id grows without limit. Final events hand the job to the
finalizer (``on_final``), which runs outside the socket loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from listener import protocol as p
from listener.finalize import preview_key
from shared import backends, jobs, metrics
from shared.logs import JOB_ID

log = logging.getLogger(__name__)

SAMPLER_INPUT = "steps"
UNKNOWN_IDS_KEPT = 1024


def node_weights(graph: dict) -> dict[str, int]:
    """Weight of each node in the whole-job percent: its step count for samplers, else 1."""
    weights = {}
    for node_id, node in graph.items():
        steps = (node.get("inputs") or {}).get(SAMPLER_INPUT) if isinstance(node, dict) else None
        weights[node_id] = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else 1
    return weights


@dataclass
class Running:
    """What the tracker knows of the prompt that is executing."""

    job: dict
    weights: dict[str, int]
    done: set = field(default_factory=set)
    node: str | None = None
    value: int = 0
    max: int = 0
    last_write: float = 0.0
    last_preview: float = 0.0

    @property
    def percent(self) -> float:
        total = sum(self.weights.values()) or 1
        done = sum(self.weights.get(n, 1) for n in self.done)
        if self.node and self.node not in self.done and self.max:
            done += self.weights.get(self.node, 1) * min(self.value / self.max, 1.0)
        return min(99.0, 100.0 * done / total)


class Tracker:
    def __init__(self, ctx, backend_id: int, backend_url: str, on_final, *, clock=time.monotonic):
        self.ctx = ctx
        self.backend_id = backend_id
        self.backend_url = backend_url
        self.on_final = on_final
        self.clock = clock
        self.running: Running | None = None
        self.unknown: OrderedDict[str, None] = OrderedDict()
        self.counts: dict[str, int] = {}
        self.count = metrics.event_counter(backend_url)

    # -- dispatch ---------------------------------------------------------------
    def handle(self, event) -> None:
        name = type(event).__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        self.count(name)
        method = getattr(self, "on_" + name, None)
        if method is not None:
            token = JOB_ID.set(getattr(event, "prompt_id", None))  # the job of every line logged meanwhile
            try:
                method(event)
            finally:
                JOB_ID.reset(token)

    def _job(self, prompt_id: str | None, *, anywhere: bool = False) -> dict | None:
        """The job of a prompt id on this backend, or None for prompts that are not ours.

        A job that has moved to another server (this one lost it, then came back with it) is not
        ours either; ``anywhere`` returns it all the same (to stop that stale run).
        """
        if not prompt_id or prompt_id in self.unknown:
            return None
        if self.running and self.running.job["id"] == prompt_id:
            return self.running.job
        with self.ctx.db.connection() as conn:
            job = jobs.get_row(conn, prompt_id)
        if job is None:
            self.unknown[prompt_id] = None
            if len(self.unknown) > UNKNOWN_IDS_KEPT:
                self.unknown.popitem(last=False)
        elif not anywhere and job["status"] not in jobs.FINAL and job["backend_id"] != self.backend_id:
            return None
        return job

    def _start(self, prompt_id: str, job: dict | None = None) -> Running | None:
        if self.running and self.running.job["id"] == prompt_id:
            return self.running
        job = job or self._job(prompt_id)
        if job is None or job["status"] in jobs.FINAL:
            return None
        self.running = Running(job=job, weights=node_weights(job["prompt"]))
        return self.running

    # -- events -------------------------------------------------------------------
    def on_Status(self, ev: p.Status) -> None:
        with self.ctx.db.connection() as conn:
            backends.record_status(conn, self.backend_id, ev.queue_remaining)

    def on_ExecutionStart(self, ev: p.ExecutionStart) -> None:
        job = self._job(ev.prompt_id, anywhere=True)
        if job is not None and (job["status"] in jobs.FINAL or job["backend_id"] != self.backend_id):
            # Its job already ended (a cancel landed while POST /prompt was in flight), or it runs on
            # another server now: nobody gets this run.
            log.info("job %s: started on ComfyUI although %s; interrupting", ev.prompt_id,
                     job["status"] if job["status"] in jobs.FINAL else "it moved to another server")
            self.on_cancel_requested(ev.prompt_id)
            return
        run = self._start(ev.prompt_id, job)
        if run is None:
            return
        with self.ctx.db.connection() as conn:
            if jobs.mark_running(conn, ev.prompt_id, nodes_total=len(run.weights)):
                log.info("job %s: running", ev.prompt_id)
        if run.job.get("cancel_requested"):
            self.on_cancel_requested(ev.prompt_id)

    def on_ExecutionCached(self, ev: p.ExecutionCached) -> None:
        run = self._start(ev.prompt_id)
        if run is not None:
            run.done.update(ev.nodes)
            self._write_progress(run, force=bool(ev.nodes))

    def on_Executing(self, ev: p.Executing) -> None:
        if ev.node is None:
            self._final(ev.prompt_id, None)
            return
        run = self._start(ev.prompt_id)
        if run is None:
            return
        if run.node and run.node != ev.node:
            run.done.add(run.node)
        run.node, run.value, run.max = ev.node, 0, 0
        self._write_progress(run, force=True)

    def on_Progress(self, ev: p.Progress) -> None:
        run = self._start(ev.prompt_id)
        if run is None:
            return
        if ev.node and ev.node != run.node:
            if run.node:
                run.done.add(run.node)
            run.node = ev.node
        run.value, run.max = ev.value, ev.max
        self._write_progress(run, force=ev.max > 0 and ev.value >= ev.max)

    def on_ProgressState(self, ev: p.ProgressState) -> None:
        """Every started node's state: finished ones count as done, even if their `executing` was missed."""
        run = self._start(ev.prompt_id)
        if run is None:
            return
        finished = {n for n, state in ev.nodes.items() if state.state == "finished" and n in run.weights}
        newly_done = finished - run.done
        run.done |= finished
        running = [state for n, state in ev.nodes.items() if state.state == "running" and n in run.weights]
        if running:
            state = running[-1]
            run.node, run.value, run.max = state.node_id, int(state.value), int(state.max)
        self._write_progress(run, force=bool(newly_done))

    def on_Preview(self, ev: p.Preview) -> None:
        run = self.running
        if ev.prompt_id and (run is None or run.job["id"] != ev.prompt_id):
            run = self._start(ev.prompt_id)
        if run is None:
            return
        now = self.clock()
        if run.last_preview and now - run.last_preview < self.ctx.config.preview_interval:
            return
        run.last_preview = now
        key = preview_key(run.job, ev.image_type)
        try:
            self.ctx.store.put_bytes(key, ev.data, ev.image_type)
        except Exception as e:  # a lost preview is not worth failing anything for
            log.warning("job %s: preview not stored: %s", run.job["id"], e)
            return
        with self.ctx.db.connection() as conn:
            jobs.set_preview(conn, run.job["id"], key)

    def on_ExecutionError(self, ev: p.ExecutionError) -> None:
        # The finalizer records the failure from history (with timings), or from this event if history is gone.
        self._final(ev.prompt_id, {"status": "failed", "code": "execution_error",
                                   "message": (ev.exception_message or "ComfyUI reported an error").strip(),
                                   "node_id": ev.node_id, "node_type": ev.node_type})

    def on_ExecutionInterrupted(self, ev: p.ExecutionInterrupted) -> None:
        self._final(ev.prompt_id, {"status": "cancelled"})

    def on_cancel_requested(self, prompt_id: str) -> None:
        """A job cancelled while it was being queued started anyway: stop it."""
        try:
            self.ctx.comfy(self.backend_url).interrupt(prompt_id)
            log.info("job %s: interrupted (cancel was requested)", prompt_id)
        except Exception as e:
            log.warning("job %s: interrupt after cancel failed: %s", prompt_id, e)

    # -- helpers --------------------------------------------------------------------
    def _write_progress(self, run: Running, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - run.last_write < self.ctx.config.progress_interval:
            return
        run.last_write = now
        with self.ctx.db.connection() as conn:
            jobs.update_progress(conn, run.job["id"], percent=run.percent, node=run.node,
                                 value=run.value, max_=run.max, title=self._node_title(run))

    def _node_title(self, run: Running) -> str | None:
        """The title of the node in progress, from the job's workflow: stored with the progress,
        so that status polls need not load the workflow files."""
        workflow = self.ctx.workflows.get(run.job["workflow"]) if run.node else None
        return workflow.node_title(run.node) if workflow else None

    def _final(self, prompt_id: str, hint: dict | None) -> None:
        """Hand a finished prompt to the finalizer; ``hint`` is what the event said, if it said more."""
        if self.running and self.running.job["id"] == prompt_id:
            self.running = None
        if self._job(prompt_id) is None:
            return
        self.on_final(prompt_id, hint)
