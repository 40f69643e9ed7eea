-- Initial schema: users, ComfyUI backends, jobs, their outputs, usage records.
-- Applied by `gateway migrate`; times are UTC, DATETIME(3).

CREATE TABLE users (
    id          CHAR(36)     NOT NULL PRIMARY KEY,
    provider    VARCHAR(16)  NOT NULL,            -- 'dev' or 'wechat'
    subject     VARCHAR(128) NOT NULL,            -- dev user name or WeChat openid
    unionid     VARCHAR(128) NULL,
    created_at  DATETIME(3)  NOT NULL,
    UNIQUE KEY uq_users_subject (provider, subject)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE backends (
    id              INT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    url             VARCHAR(255) NOT NULL,
    client_id       VARCHAR(64)  NULL,            -- the listener's clientId on its current socket
    connected       TINYINT(1)   NOT NULL DEFAULT 0,
    queue_remaining INT          NOT NULL DEFAULT 0,
    last_event_at   DATETIME(3)  NULL,
    owner           VARCHAR(64)  NULL,            -- listener instance that holds the lease
    lease_until     DATETIME(3)  NULL,
    updated_at      DATETIME(3)  NOT NULL,
    UNIQUE KEY uq_backends_url (url)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE jobs (
    id                CHAR(36)     NOT NULL PRIMARY KEY,   -- also the ComfyUI prompt_id
    user_id           CHAR(36)     NOT NULL,
    backend_id        INT          NULL,
    workflow          VARCHAR(64)  NOT NULL,
    params            JSON         NOT NULL,
    prompt            JSON         NOT NULL,               -- the filled graph sent to ComfyUI
    status            ENUM('submitting','queued','running','succeeded','failed','cancelled') NOT NULL,
    number            BIGINT       NULL,                   -- ComfyUI's queue number
    client_id         VARCHAR(64)  NULL,                   -- the clientId it was submitted under
    submit_attempts   INT          NOT NULL DEFAULT 0,
    progress_percent  DOUBLE       NOT NULL DEFAULT 0,
    progress_node     VARCHAR(64)  NULL,
    progress_value    INT          NOT NULL DEFAULT 0,
    progress_max      INT          NOT NULL DEFAULT 0,
    nodes_done        INT          NOT NULL DEFAULT 0,
    nodes_total       INT          NOT NULL DEFAULT 0,
    preview_key       VARCHAR(512) NULL,
    error_code        VARCHAR(32)  NULL,
    error_message     TEXT         NULL,
    error_node_id     VARCHAR(64)  NULL,
    error_node_type   VARCHAR(128) NULL,
    cancel_requested  TINYINT(1)   NOT NULL DEFAULT 0,
    version           INT          NOT NULL DEFAULT 0,     -- bumped on every change (ETag)
    idempotency_key   VARCHAR(255) NULL,
    request_hash      CHAR(64)     NULL,
    created_at        DATETIME(3)  NOT NULL,
    submitted_at      DATETIME(3)  NULL,
    started_at        DATETIME(3)  NULL,
    finished_at       DATETIME(3)  NULL,
    updated_at        DATETIME(3)  NOT NULL,
    UNIQUE KEY uq_jobs_idempotency (user_id, idempotency_key),
    KEY ix_jobs_user_created (user_id, created_at, id),
    KEY ix_jobs_backend_status (backend_id, status, number),
    KEY ix_jobs_status_updated (status, updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE job_outputs (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    job_id        CHAR(36)     NOT NULL,
    node_id       VARCHAR(64)  NOT NULL,
    idx           INT          NOT NULL,
    object_key    VARCHAR(512) NOT NULL,
    content_type  VARCHAR(64)  NOT NULL,
    bytes         BIGINT       NOT NULL,
    width         INT          NULL,
    height        INT          NULL,
    created_at    DATETIME(3)  NOT NULL,
    UNIQUE KEY uq_job_outputs (job_id, node_id, idx)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE usage_records (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    job_id        CHAR(36)     NOT NULL,
    user_id       CHAR(36)     NOT NULL,
    workflow      VARCHAR(64)  NOT NULL,
    status        VARCHAR(16)  NOT NULL,
    images        INT          NOT NULL,
    megapixels    DOUBLE       NOT NULL,
    steps         INT          NOT NULL,
    gpu_seconds   DOUBLE       NOT NULL,
    queue_seconds DOUBLE       NOT NULL,
    backend       VARCHAR(255) NOT NULL,
    created_at    DATETIME(3)  NOT NULL,
    finished_at   DATETIME(3)  NOT NULL,
    UNIQUE KEY uq_usage_job (job_id),
    KEY ix_usage_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
