"""The listener's hourly cleanup: ``Hourly`` runs one every INTERVAL_S when ``scheduled`` says so."""

from __future__ import annotations

import logging
import threading

from shared.errors import DatabaseUnavailableError
from shared.retention.cleanup import Policy, Report, run

# The package's logger, as before it was split: one name for every line about a cleanup.
log = logging.getLogger("shared.retention")

INTERVAL_S = 3600.0       # the listener's cleanups
FIRST_DELAY_S = 60.0      # the listener's first one comes this long after it starts


def scheduled(cfg) -> bool:
    """Whether the listener cleans up every hour: some RETENTION_* setting is set (0 included)."""
    return any(v is not None for v in (cfg.retention_days, cfg.retention_uploads_hours, cfg.retention_previews))


class Hourly:
    """The listener's cleanups: one every ``interval_s`` (the first ``first_delay_s`` after start), with the
    settings' policy; a turn another process is taking is skipped. Start it only when ``scheduled``."""

    def __init__(self, ctx, stopping: threading.Event, *, interval_s: float = INTERVAL_S,
                 first_delay_s: float = FIRST_DELAY_S):
        self.ctx = ctx
        self.stopping = stopping
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.reports: list[Report] = []
        self.thread = threading.Thread(target=self.run, name="retention cleanup", daemon=True)

    def start(self) -> "Hourly":
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        delay = self.first_delay_s
        while not self.stopping.wait(delay):
            delay = self.interval_s
            try:
                report = run(self.ctx.db, self.ctx.store, Policy.from_config(self.ctx.config), stopping=self.stopping)
                self.reports.append(report)
            except DatabaseUnavailableError:
                log.warning("cleanup: database unavailable; the next one retries")
            except Exception:
                log.exception("cleanup: unexpected error; the next one retries")
