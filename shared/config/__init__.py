"""Every setting of the gateway, read once from the environment.

``Config.from_env(os.environ)`` validates everything and raises ``ConfigError``
naming the variable when a value is wrong. Code receives the frozen object;
tests construct it with ``Config.from_env({...})`` or ``dataclasses.replace``.
The README's configuration table lists exactly the variables in ``SETTINGS``
(a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from shared.config.settings import SETTINGS, Setting
from shared.config.values import PROJECT_ROOT, ConfigError, DatabaseUrl, _str, _webhook_secret

MAX_DEADLINE_S = 7 * 86400.0

__all__ = ["Config", "ConfigError", "DatabaseUrl", "PROJECT_ROOT", "SETTINGS", "Setting"]

_SECRET_FIELDS = {"secret_key", "secret_key_previous", "admin_token", "database_url", "wechat_secret", "webhook_secret",
                  "wechat_push_token", "wechat_push_aes_key", "moderation_webhook_secret"}


def _together(values: dict, first: str, second: str) -> None:
    """Two settings that mean nothing alone: both set or neither (the message names the missing one)."""
    a, b = (bool(values[next(s.field for s in SETTINGS if s.env == name)]) for name in (first, second))
    if a != b:
        missing, other = (second, first) if a else (first, second)
        raise ConfigError(f"{missing}: must be set together with {other}")


def _moderation(values: dict) -> None:
    """What each MODERATION mode needs."""
    if values["moderation"] == "wechat":
        if not values["wechat_appid"]:
            raise ConfigError("MODERATION: wechat needs WECHAT_APPID and WECHAT_SECRET (the access token)")
        if not values["wechat_push_token"]:
            raise ConfigError("WECHAT_PUSH_TOKEN: required with MODERATION=wechat (WeChat pushes image verdicts)")
        if not values["wechat_push_aes_key"]:
            raise ConfigError("WECHAT_PUSH_AES_KEY: required with MODERATION=wechat (the push's safe mode: an "
                              "unencrypted push's body is not signed)")
    key = values["wechat_push_aes_key"]
    if key:
        from shared.wxpush import valid_aes_key
        if not valid_aes_key(key):
            raise ConfigError("WECHAT_PUSH_AES_KEY: must be the 43 characters of the EncodingAESKey")
    if values["moderation"] == "webhook":
        if not values["moderation_webhook_url"] or not values["moderation_webhook_secret"]:
            raise ConfigError("MODERATION_WEBHOOK_URL: MODERATION=webhook needs it and MODERATION_WEBHOOK_SECRET")
    if values["moderation_deadline_s"] > MAX_DEADLINE_S:
        raise ConfigError(f"MODERATION_DEADLINE_S: must be at most {MAX_DEADLINE_S:g} (7 days: the longest a signed "
                          "URL lives)")
    if values["moderation_webhook_secret"]:
        _webhook_secret(values["moderation_webhook_secret"], "MODERATION_WEBHOOK_SECRET")


@dataclass(frozen=True)
class Config:
    database_url: DatabaseUrl | None
    comfyui_urls: tuple[str, ...]
    storage_url: str
    s3_endpoint_url: str | None
    s3_region: str
    s3_addressing_style: str
    public_base_url: str
    signed_url_ttl: int
    secret_key: str | None
    secret_key_previous: str | None
    token_ttl: int
    workflows_dir: str
    dev_login: bool
    admin_token: str | None
    wechat_api_base: str
    wechat_appid: str | None
    wechat_secret: str | None
    wechat_timeout: float
    wechat_subscribe_template_id: str | None
    wechat_subscribe_page: str
    wechat_subscribe_data: tuple[tuple[str, str], ...] | None
    wechat_miniprogram_state: str
    state_dir: str
    comfyui_timeout: float
    comfyui_slots: int
    capabilities_refresh_s: float
    lost_job_retries: int
    dispatch_sweep_s: float
    progress_interval: float
    preview_interval: float
    history_retry_s: float
    reconnect_max_s: float
    reconcile_interval_s: float
    watchdog_s: float
    lease_s: float
    queue_timeout_s: float
    run_timeout_s: float
    output_copy_deadline_s: float
    max_upload_bytes: int
    max_active_jobs: int
    daily_job_quota: int
    rate_limit_per_minute: int
    login_rate_limit_per_minute: int
    trusted_proxies: int
    keep_comfy_metadata: bool
    aigc_provider: str
    moderation: str
    moderation_fail: str
    moderation_outputs: str
    moderation_deadline_s: float
    moderation_scene: int
    wechat_push_token: str | None
    wechat_push_aes_key: str | None
    moderation_webhook_url: str | None
    moderation_webhook_secret: str | None
    webhook_url: str | None
    webhook_secret: str | None
    cors_origins: tuple[str, ...]
    db_pool_size: int
    retention_days: int | None
    retention_uploads_hours: int | None
    retention_previews: bool | None
    log_level: str
    log_format: str

    @classmethod
    def from_env(cls, environ=None) -> "Config":
        """Build and validate the config from environment variables."""
        environ = os.environ if environ is None else environ
        values = {}
        for s in SETTINGS:
            raw = environ.get(s.env)
            if raw is None or raw == "":
                values[s.field] = s.default if not isinstance(s.default, str) or s.parse is _str \
                    else s.parse(s.default)
                continue
            try:
                values[s.field] = s.parse(raw)
            except ValueError as e:
                raise ConfigError(f"{s.env}: {e}") from None
        if values["storage_url"] is None:
            values["storage_url"] = Path(values["state_dir"], "storage").resolve().as_uri()
        _together(values, "WECHAT_APPID", "WECHAT_SECRET")
        if values["wechat_subscribe_template_id"] and not values["wechat_appid"]:
            raise ConfigError("WECHAT_SUBSCRIBE_TEMPLATE_ID: needs WECHAT_APPID and WECHAT_SECRET (the access token)")
        _together(values, "WECHAT_SUBSCRIBE_TEMPLATE_ID", "WECHAT_SUBSCRIBE_DATA")
        if values["webhook_url"] and not values["webhook_secret"]:
            raise ConfigError("WEBHOOK_SECRET: must be set together with WEBHOOK_URL")
        if values["webhook_secret"]:
            _webhook_secret(values["webhook_secret"])
        _moderation(values)
        if values["log_level"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError("LOG_LEVEL: must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return cls(**values)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def require_secret_key(self) -> str:
        if not self.secret_key or len(self.secret_key) < 16:
            raise ConfigError("SECRET_KEY: must be set to a random string of at least 16 characters")
        return self.secret_key

    def require_lambda_ready(self) -> None:
        """What a Lambda deployment cannot run without (it has no shared disk and no `gateway dev`)."""
        self.require_secret_key()
        if self.database_url is None:
            raise ConfigError("DATABASE_URL: must be set on Lambda")
        if not self.storage_url.startswith("s3://"):
            raise ConfigError("STORAGE_URL: must be an s3:// URL on Lambda (a function's disk is not shared)")

    def __repr__(self) -> str:
        shown = {f.name: ("***" if f.name in _SECRET_FIELDS and getattr(self, f.name) else getattr(self, f.name))
                 for f in dataclasses.fields(self)}
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
