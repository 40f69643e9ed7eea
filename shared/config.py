"""Every setting of the gateway, read once from the environment.

``Config.from_env(os.environ)`` validates everything and raises ``ConfigError``
naming the variable when a value is wrong. Code receives the frozen object;
tests construct it with ``Config.from_env({...})`` or ``dataclasses.replace``.
The README's configuration table lists exactly the variables in ``SETTINGS``
(a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, unquote

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class DatabaseUrl:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> "DatabaseUrl":
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
            raise ValueError("must start with mysql://")
        db = parts.path.lstrip("/")
        if not db or "/" in db:
            raise ValueError("must name a database: mysql://user:pass@host:port/db")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                   user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                   database=unquote(db))

    def with_database(self, database: str) -> "DatabaseUrl":
        return dataclasses.replace(self, database=database)

    def __str__(self) -> str:  # never print the password
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"


def _str(value: str) -> str:
    return value


def _int(lo: int | None = None, hi: int | None = None):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if lo is not None and n < lo:
            raise ValueError(f"must be at least {lo}")
        if hi is not None and n > hi:
            raise ValueError(f"must be at most {hi}")
        return n
    return parse


def _float(lo: float = 0.0):
    def parse(value: str) -> float:
        try:
            n = float(value)
        except ValueError:
            raise ValueError("must be a number") from None
        if not n >= lo:
            raise ValueError(f"must be at least {lo}")
        if not math.isfinite(n):
            raise ValueError("must be a finite number")
        return n
    return parse


def _choice(*choices: str):
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError(f"must be {', '.join(choices[:-1])} or {choices[-1]}")
        return v
    return parse


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.strip().rstrip("/")


def _http_urls(value: str) -> tuple[str, ...]:
    urls = tuple(_http_url(u) for u in value.split(",") if u.strip())
    if not urls:
        raise ValueError("must name at least one URL")
    if len(set(urls)) != len(urls):
        raise ValueError("lists a URL twice")
    return urls


def _origins(value: str) -> tuple[str, ...]:
    """Browser origins (scheme://host[:port], no path) or *."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc
                              or parts.path or parts.query or parts.fragment):
            raise ValueError(f"{origin!r} is not an origin like https://h5.example.com (or *)")
    return origins


def _webhook_secret(secret: str) -> None:
    """whsec_ + base64 (Standard Webhooks), or a plain string of at least 24 characters."""
    import base64
    import binascii
    if secret.startswith("whsec_"):
        try:
            if len(base64.b64decode(secret[6:], validate=True)) < 16:
                raise ConfigError("WEBHOOK_SECRET: a whsec_ secret must hold at least 16 bytes")
        except binascii.Error:
            raise ConfigError("WEBHOOK_SECRET: whsec_ must be followed by base64") from None
    elif len(secret) < 24:
        raise ConfigError("WEBHOOK_SECRET: must be whsec_<base64> or at least 24 characters")


def _subscribe_data(value: str) -> tuple[tuple[str, str], ...]:
    from shared.subscribe import parse_data
    return parse_data(value)


def _page(value: str) -> str:
    """A page of the mini-program (pages/index/index, optionally with a query)."""
    v = value.strip()
    if not v or len(v) > 128 or any(c.isspace() or not c.isprintable() for c in v) or "#" in v:
        raise ValueError(f"{value!r} is not a page path like pages/index/index")
    return v


def _storage_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("must be s3://bucket/prefix")
    elif parts.scheme == "file":
        if not parts.path:
            raise ValueError("must be file:///absolute/path")
    else:
        raise ValueError("must be s3://bucket/prefix or file:///path")
    return value


def _database_url(value: str) -> DatabaseUrl:
    return DatabaseUrl.parse(value)


@dataclass(frozen=True)
class Setting:
    env: str
    field: str
    parse: object
    default: object
    doc: str


def _state(*parts: str) -> str:
    return str(PROJECT_ROOT.joinpath(".state", *parts))


# (variable, field, parser, default, description): the README table mirrors this.
SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", _database_url, None,
            "MySQL/MariaDB as mysql://user:pass@host:port/db. Unset: `gateway dev` starts a private MariaDB "
            "(the tests use TEST_DATABASE_URL, else 127.0.0.1:3306, else a private one)."),
    Setting("COMFYUI_URLS", "comfyui_urls", _http_urls, "http://127.0.0.1:8188",
            "Comma-separated base URLs of the ComfyUI servers."),
    Setting("STORAGE_URL", "storage_url", _storage_url, None,
            "s3://bucket/prefix or file:///path. Default: file://<STATE_DIR>/storage."),
    Setting("S3_ENDPOINT_URL", "s3_endpoint_url", _http_url, None,
            "Endpoint of a non-AWS S3 API (MinIO, Tencent COS, Aliyun OSS, ...)."),
    Setting("S3_REGION", "s3_region", _str, "us-east-1", "Region used to sign S3 requests (SigV4)."),
    Setting("S3_ADDRESSING_STYLE", "s3_addressing_style", _choice("auto", "path", "virtual"), "auto",
            "auto: path-style (endpoint/bucket/key) with S3_ENDPOINT_URL, else AWS's choice; virtual "
            "(bucket.endpoint/key, needed by Tencent COS and Aliyun OSS) or path to force one."),
    Setting("PUBLIC_BASE_URL", "public_base_url", _http_url, "http://127.0.0.1:8000",
            "How apps reach this API; the base of local-storage links."),
    Setting("SIGNED_URL_TTL", "signed_url_ttl", _int(60, 7 * 86400), 3600,
            "Seconds a signed image URL stays valid."),
    Setting("SECRET_KEY", "secret_key", _str, None,
            "Signs tokens and local-storage URLs. `gateway serve` refuses to start without it; `gateway dev` makes one."),
    Setting("SECRET_KEY_PREVIOUS", "secret_key_previous", _str, None,
            "The key before a rotation: tokens and local-storage links it signed stay valid until they expire. Remove it after TOKEN_TTL."),
    Setting("TOKEN_TTL", "token_ttl", _int(60, 90 * 86400), 7 * 86400, "Seconds a login token stays valid."),
    Setting("WORKFLOWS_DIR", "workflows_dir", _str, str(PROJECT_ROOT / "workflows"),
            "Folder of workflow files (<name>.json)."),
    Setting("DEV_LOGIN", "dev_login", _bool, False, "1 enables POST /v1/auth/dev (local development and demos only)."),
    Setting("ADMIN_TOKEN", "admin_token", _str, None, "Bearer token of the operator endpoints (usage)."),
    Setting("WECHAT_API_BASE", "wechat_api_base", _http_url, "https://api.weixin.qq.com",
            "Base URL of WeChat's server API (jscode2session); tests point it at a fake."),
    Setting("WECHAT_APPID", "wechat_appid", _str, None,
            "The mini-program's AppID. With WECHAT_SECRET it enables POST /v1/auth/wechat (else 404)."),
    Setting("WECHAT_SECRET", "wechat_secret", _str, None,
            "The mini-program's AppSecret (never logged, never returned)."),
    Setting("WECHAT_TIMEOUT", "wechat_timeout", _float(0.1), 5.0,
            "Seconds for each call to WeChat's server API (connect and read): jscode2session (past it the login "
            "answers 503), stable_token, subscribe messages."),
    Setting("WECHAT_SUBSCRIBE_TEMPLATE_ID", "wechat_subscribe_template_id", _str, None,
            "The subscribe message template (from the mini-program's admin console) pushed when a job submitted "
            "with notify: true is final; needs WECHAT_APPID, WECHAT_SECRET and WECHAT_SUBSCRIBE_DATA. Unset: no "
            "pushes (the listener drops them). Listener only."),
    Setting("WECHAT_SUBSCRIBE_PAGE", "wechat_subscribe_page", _page, "pages/index/index",
            "The mini-program page the pushed message opens; ?job=<id> is added."),
    Setting("WECHAT_SUBSCRIBE_DATA", "wechat_subscribe_data", _subscribe_data, None,
            "JSON object from the template's keys to text with placeholders, e.g. {\"thing1\": "
            "\"{workflow_title}\", \"phrase2\": \"{status_text}\", \"time3\": \"{finished_at}\"}; placeholders: "
            "workflow, workflow_title, status, status_text, finished_at, job_id. Checked at start."),
    Setting("WECHAT_MINIPROGRAM_STATE", "wechat_miniprogram_state", _choice("formal", "trial", "developer"),
            "formal",
            "Which version of the mini-program the pushed message opens: formal, trial or developer."),
    Setting("STATE_DIR", "state_dir", _str, _state(),
            "Local state: the private database of `gateway dev`, local storage."),
    Setting("COMFYUI_TIMEOUT", "comfyui_timeout", _float(0.1), 10.0,
            "Seconds for one HTTP call to ComfyUI (connect and read)."),
    Setting("COMFYUI_SLOTS", "comfyui_slots", _int(1, 64), 2,
            "Prompts one ComfyUI server holds at once (one running, the rest ready so the GPU never idles between "
            "jobs); `gateway backends slots URL N` sets it per server."),
    Setting("CAPABILITIES_REFRESH_S", "capabilities_refresh_s", _float(1.0), 300.0,
            "Seconds between two reads of a server's /object_info by the listener (also on connect and on "
            "`gateway backends refresh`)."),
    Setting("LOST_JOB_RETRIES", "lost_job_retries", _int(0, 10), 1,
            "Times a job that was running on a server that went away is run again elsewhere before it fails "
            "with `backend_lost` (jobs that had not started always go back to the queue)."),
    Setting("DISPATCH_SWEEP_S", "dispatch_sweep_s", _float(0.1), 2.0,
            "Seconds between two safety-net passes of the listener over the gateway queue (jobs are normally "
            "sent at submit or the moment a slot frees)."),
    Setting("PROGRESS_INTERVAL", "progress_interval", _float(0.0), 0.25,
            "Minimum seconds between two progress writes of one job (coalescing)."),
    Setting("PREVIEW_INTERVAL", "preview_interval", _float(0.0), 1.0,
            "Minimum seconds between two stored previews of one job."),
    Setting("HISTORY_RETRY_S", "history_retry_s", _float(0.0), 30.0,
            "How long the listener keeps retrying /history/{id} after a job ends."),
    Setting("RECONNECT_MAX_S", "reconnect_max_s", _float(0.1), 30.0,
            "Upper bound of the listener's reconnect backoff, in seconds."),
    Setting("RECONCILE_INTERVAL_S", "reconcile_interval_s", _float(0.1), 5.0,
            "Seconds between two reconciliations of a backend's active jobs with ComfyUI."),
    Setting("WATCHDOG_S", "watchdog_s", _float(1.0), 60.0,
            "A socket silent this long while a job it carries runs is reconnected; a server unreachable this long "
            "has its overdue jobs failed without asking it."),
    Setting("LEASE_S", "lease_s", _float(1.0), 10.0,
            "Seconds a listener's ownership of a backend lasts without renewal (failover time)."),
    Setting("QUEUE_TIMEOUT_S", "queue_timeout_s", _float(1.0), 3600.0,
            "A job still queued after this many seconds is removed from ComfyUI and fails with `timeout`."),
    Setting("RUN_TIMEOUT_S", "run_timeout_s", _float(1.0), 600.0,
            "Default run-time limit of a job (a workflow's `timeout_s` overrides it)."),
    Setting("OUTPUT_COPY_DEADLINE_S", "output_copy_deadline_s", _float(0.0), 120.0,
            "How long copying a job's images into storage is retried before it fails with `output_copy_failed`."),
    Setting("MAX_UPLOAD_BYTES", "max_upload_bytes", _int(1024, 100 * 1024 * 1024), 10 * 1024 * 1024,
            "Largest input image an app may upload, in bytes."),
    Setting("MAX_ACTIVE_JOBS", "max_active_jobs", _int(0), 3,
            "Jobs one user may have queued or running at once (0 = no limit)."),
    Setting("DAILY_JOB_QUOTA", "daily_job_quota", _int(0), 200,
            "Jobs one user may submit per UTC day (0 = no limit)."),
    Setting("RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute", _int(0), 60,
            "Submit, cancel and upload requests per user per minute (0 = no limit)."),
    Setting("LOGIN_RATE_LIMIT_PER_MINUTE", "login_rate_limit_per_minute", _int(0), 20,
            "Login requests per client IP per minute (0 = no limit)."),
    Setting("TRUSTED_PROXIES", "trusted_proxies", _int(0, 10), 0,
            "Reverse proxies in front of `gateway serve` that append to X-Forwarded-For; the client IP (login "
            "rate limit) is read that many hops from the right. 0 = the connecting peer. Not used on Lambda."),
    Setting("KEEP_COMFY_METADATA", "keep_comfy_metadata", _bool, False,
            "1 keeps ComfyUI's `prompt`/`workflow` text chunks (the whole filled graph) in stored images; by default "
            "they are dropped while the image is copied, so apps never receive the operator's graph."),
    Setting("AIGC_PROVIDER", "aigc_provider", _str, "comfy-gateway",
            "The service provider named in the implicit AI-generated-content label written into every stored image "
            "(GB 45438-2025): set it to your company or service name."),
    Setting("WEBHOOK_URL", "webhook_url", _http_url, None,
            "The operator's endpoint for job.succeeded, job.failed, job.cancelled and usage.recorded events "
            "(Standard Webhooks, signed with WEBHOOK_SECRET); unset: none are sent."),
    Setting("WEBHOOK_SECRET", "webhook_secret", _str, None,
            "The Standard Webhooks signing secret (whsec_<base64>, or any string of at least 24 characters); "
            "required with WEBHOOK_URL."),
    Setting("CORS_ORIGINS", "cors_origins", _origins, "",
            "Comma-separated origins of H5 pages allowed to call the API from a browser (e.g. "
            "https://h5.example.com), or * for any; empty: none (apps and mini-programs need none)."),
    Setting("DB_POOL_SIZE", "db_pool_size", _int(1, 1000), 10,
            "MySQL connections one `gateway serve` worker process opens at most; requests beyond it wait for one "
            "(up to 5 s, then 503 database_unavailable)."),
    Setting("LOG_LEVEL", "log_level", _str, "INFO", "Python logging level."),
)

_SECRET_FIELDS = {"secret_key", "secret_key_previous", "admin_token", "database_url", "wechat_secret", "webhook_secret"}


def _together(values: dict, first: str, second: str) -> None:
    """Two settings that mean nothing alone: both set or neither (the message names the missing one)."""
    a, b = (bool(values[next(s.field for s in SETTINGS if s.env == name)]) for name in (first, second))
    if a != b:
        missing, other = (second, first) if a else (first, second)
        raise ConfigError(f"{missing}: must be set together with {other}")


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
    webhook_url: str | None
    webhook_secret: str | None
    cors_origins: tuple[str, ...]
    db_pool_size: int
    log_level: str

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
