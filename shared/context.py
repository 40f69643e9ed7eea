"""What a function or the listener needs, built once per process from the config.

Heavy parts (the object store and its boto3 client, the workflows, requests and
the ComfyUI clients) are imported and built on first use, so a cold start pays
only for what the called function touches.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from shared.config import Config
from shared.db import Database

if TYPE_CHECKING:
    import requests

    from shared.comfy import ComfyClient

log = logging.getLogger(__name__)


class Context:
    """``bounded``: at most DB_POOL_SIZE MySQL connections (the HTTP functions); the listener's
    long-lived threads each keep theirs, so they never wait for one."""

    def __init__(self, config: Config, *, bounded: bool = True):
        self.config = config
        self.bounded = bounded
        self._lock = threading.Lock()
        self._clients: dict[str, ComfyClient] = {}

    @cached_property
    def db(self) -> Database:
        if self.config.database_url is None:
            from shared.config import ConfigError
            raise ConfigError("DATABASE_URL: must be set (only `gateway dev` starts a private database)")
        return Database(self.config.database_url,
                        max_connections=self.config.db_pool_size if self.bounded else None)

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
    def capabilities_cache(self):
        from shared.pool.capabilities import CapabilitiesCache
        return CapabilitiesCache()

    @cached_property
    def session(self) -> requests.Session:
        import requests

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=32)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @cached_property
    def wechat_tokens(self):
        """The mini-program's access token, shared through MySQL (None without WECHAT_APPID / WECHAT_SECRET)."""
        cfg = self.config
        if not cfg.wechat_appid or not cfg.wechat_secret:
            return None
        from shared.wechat_token import AccessTokens
        return AccessTokens(self.db, self.session, cfg.wechat_api_base, cfg.wechat_appid, cfg.wechat_secret,
                            timeout=cfg.wechat_timeout)

    def comfy(self, base_url: str) -> ComfyClient:
        """The client of one ComfyUI server."""
        from shared.comfy import ComfyClient

        with self._lock:
            client = self._clients.get(base_url)
            if client is None:
                client = self._clients[base_url] = ComfyClient(self.session, base_url,
                                                               timeout=self.config.comfyui_timeout)
            return client

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
                from shared.logs import setup
                setup(config)
                if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
                    config.require_lambda_ready()  # refuse every request, loudly, rather than misbehave
                _context = Context(config)
    return _context


def set_context(ctx: Context | None) -> None:
    """Install a context (tests, `gateway serve`)."""
    global _context
    _context = ctx
