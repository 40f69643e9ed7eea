-- Input images uploaded by apps (img2img): one row per POST /v1/uploads.
CREATE TABLE uploads (
    id            CHAR(36)     NOT NULL PRIMARY KEY,
    user_id       CHAR(36)     NOT NULL,
    object_key    VARCHAR(512) NOT NULL,
    content_type  VARCHAR(64)  NOT NULL,
    max_bytes     BIGINT       NOT NULL,
    created_at    DATETIME(3)  NOT NULL,
    expires_at    DATETIME(3)  NOT NULL,
    KEY ix_uploads_user (user_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
