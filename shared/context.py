"""What a function or the listener needs, built once per process from the config.

Heavy parts (the object store with boto3, the workflows) are built lazily on
first use, so a cold start pays only for what the called function touches.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cached_property

import requests

from shared.comfy import ChoicesCache, ComfyClient
from shared.config import Config
from shared.db import Database

log = logging.getLogger(__name__)


class Context:
    def __init__(self, config: Config):
        self.config = config
        self._lock = threading.Lock()
        self._clients: dict[str, ComfyClient] = {}
        self._run_times: dict[str, tuple[float, float | None]] = {}

    @cached_property
    def db(self) -> Database:
        if self.config.database_url is None:
            from shared.config import ConfigError
            raise ConfigError("DATABASE_URL: must be set (only `gateway dev` starts a private database)")
        return Database(self.config.database_url)

    @cached_property
    def store(self):
        from shared.storage import open_store
        return open_store(self.config)

    @cached_property
    def workflows(self) -> dict:
        from shared.workflows import load_workflows
        workflows, problems = load_workflows(self.config.workflows_dir)
        for problem in problems:
            log.error("workflow not loaded: %s", problem)
        return workflows

    @cached_property
    def choices_cache(self) -> ChoicesCache:
        return ChoicesCache(self.config.object_info_ttl)

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=32)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def comfy(self, base_url: str) -> ComfyClient:
        """The client of one ComfyUI server."""
        with self._lock:
            client = self._clients.get(base_url)
            if client is None:
                client = self._clients[base_url] = ComfyClient(self.session, base_url,
                                                               timeout=self.config.comfyui_timeout)
            return client

    def choices_for(self, base_url: str):
        """A `choices(class_type, input)` callable for workflow enum_from, from one server."""
        def choices(class_type: str, input_name: str):
            from shared.workflows import choices_from_object_info
            info = self.choices_cache.object_info(self.comfy(base_url), class_type)
            return choices_from_object_info(info, class_type, input_name) if info else None
        return choices

    def run_seconds(self, workflow: str, *, max_age: float = 60.0) -> float | None:
        """Recent mean run time of a workflow, cached for a minute per process (not a read per poll)."""
        import time
        from shared.jobs import recent_run_seconds
        now = time.monotonic()
        hit = self._run_times.get(workflow)
        if hit and now - hit[0] < max_age:
            return hit[1]
        with self.db.connection() as conn:
            value = recent_run_seconds(conn, workflow)
        self._run_times[workflow] = (now, value)
        return value

    def secret_keys(self) -> tuple[str, ...]:
        return tuple(k for k in (self.config.secret_key, self.config.secret_key_previous) if k)


_context: Context | None = None
_context_lock = threading.Lock()


def get_context() -> Context:
    """The process-wide context, built from the environment on first use."""
    global _context
    if _context is None:
        with _context_lock:
            if _context is None:
                config = Config.from_env()
                logging.basicConfig(level=config.log_level.upper(),
                                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
                if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
                    config.require_lambda_ready()  # refuse every request, loudly, rather than misbehave
                _context = Context(config)
    return _context


def set_context(ctx: Context | None) -> None:
    """Install a context (tests, `gateway serve`)."""
    global _context
    _context = ctx
