"""The table of every setting: (variable, field, parser, default, description). The README's
configuration tables mirror it (tests/shared/test_config.py, tests/test_docs_zh.py)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config.values import (PROJECT_ROOT, _bool, _choice, _database_url, _float, _http_url, _http_urls, _int,
                                  _origins, _page, _storage_url, _str, _subscribe_data, _upload_hours)


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
    Setting("ADMIN_TOKEN", "admin_token", _str, None,
            "Bearer token of the operator endpoints (usage). `gateway dev` makes one (kept in STATE_DIR/admin_token) "
            "and prints it."),
    Setting("WECHAT_API_BASE", "wechat_api_base", _http_url, "https://api.weixin.qq.com",
            "Base URL of WeChat's server API (jscode2session); tests point it at a fake."),
    Setting("WECHAT_APPID", "wechat_appid", _str, None,
            "The mini-program's AppID. With WECHAT_SECRET it enables POST /v1/auth/wechat (else 404)."),
    Setting("WECHAT_SECRET", "wechat_secret", _str, None,
            "The mini-program's AppSecret (never logged, never returned)."),
    Setting("WECHAT_TIMEOUT", "wechat_timeout", _float(0.1), 5.0,
            "Seconds for each call to WeChat's server API (connect and read): jscode2session (past it the login "
            "answers 503), stable_token, subscribe messages, content checks; and for each call to "
            "MODERATION_WEBHOOK_URL."),
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
    Setting("MODERATION", "moderation", _choice("none", "wechat", "webhook"), "none",
            "Content security: `wechat` (WeChat's msg_sec_check on prompts and free-text params, media_check_async "
            "on every output image), `webhook` (the same questions to MODERATION_WEBHOOK_URL) or `none`. WeChat "
            "requires checks before a mini-program with user-generated content goes live."),
    Setting("MODERATION_FAIL", "moderation_fail", _choice("open", "closed"), "closed",
            "When a check cannot be made (WeChat or the webhook down, refusing, no verdict before "
            "MODERATION_DEADLINE_S): `closed` refuses the job (submit: 503) or its images; `open` lets them through "
            "and logs it."),
    Setting("MODERATION_OUTPUTS", "moderation_outputs", _choice("hold", "publish"), "hold",
            "`hold`: a job stays running (progress says content_check) until its images have a verdict; `publish`: "
            "it succeeds at once and its images are withdrawn if the verdict is risky."),
    Setting("MODERATION_DEADLINE_S", "moderation_deadline_s", _float(1.0), 1800.0,
            "Seconds an image waits for its verdict (WeChat: seconds usually, 30 minutes at worst; at most 7 days); "
            "past it MODERATION_FAIL decides."),
    Setting("MODERATION_SCENE", "moderation_scene", _int(1, 4), 2,
            "The scene WeChat's checks are asked for: 1 profile, 2 comment, 3 forum, 4 social log."),
    Setting("WECHAT_PUSH_TOKEN", "wechat_push_token", _str, None,
            "The Token of the mini-program's message push (消息推送) settings, whose URL is "
            "{PUBLIC_BASE_URL}/v1/wechat/push: WeChat's verdicts on images arrive there. Required with "
            "MODERATION=wechat."),
    Setting("WECHAT_PUSH_AES_KEY", "wechat_push_aes_key", _str, None,
            "The EncodingAESKey of the message push settings (43 characters): the safe mode (安全模式), required with "
            "MODERATION=wechat; unencrypted pushes are refused."),
    Setting("MODERATION_WEBHOOK_URL", "moderation_webhook_url", _http_url, None,
            "MODERATION=webhook: the operator's endpoint that answers moderation.text and moderation.image "
            "requests (signed like webhooks) with {\"suggest\": ...}: pass, review or risky."),
    Setting("MODERATION_WEBHOOK_SECRET", "moderation_webhook_secret", _str, None,
            "The signing secret of MODERATION_WEBHOOK_URL (whsec_<base64>, or at least 24 characters)."),
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
    Setting("RETENTION_DAYS", "retention_days", _int(0, 36500), None,
            "Days after which a final job is deleted, counted from its finish: its images (outputs, input copies, "
            "preview), then its rows (job, outputs, sent events); usage records are kept. Unset or 0: jobs are kept "
            "forever. Any RETENTION_* set: the listener runs `gateway cleanup` hourly. Listener and CLI only."),
    Setting("RETENTION_UPLOADS_HOURS", "retention_uploads_hours", _upload_hours, None,
            "Hours after which an uploaded input image (file and row) is deleted: at least 24 (jobs can use an "
            "upload for a day, and keep their own copy), or 0 to keep them. Unset: 24."),
    Setting("RETENTION_PREVIEWS", "retention_previews", _bool, None,
            "1 deletes a job's live preview once the job is final (apps see it only while it runs); 0 keeps "
            "previews. Unset: deleted."),
    Setting("LOG_LEVEL", "log_level", _str, "INFO", "Python logging level."),
    Setting("LOG_FORMAT", "log_format", _choice("text", "json"), "text",
            "text: one readable line per record; json: one JSON object per line (time, level, logger, message, "
            "request_id, job_id, exception), gunicorn's own lines included."),
)
