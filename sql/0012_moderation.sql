-- Content security (MODERATION=wechat|webhook; shared/moderation/).
--
-- jobs.status 'checking': ComfyUI is done and the images are stored, but their check has no verdict
-- yet (MODERATION_OUTPUTS=hold); apps are shown 'running'. It holds no slot of a server.
-- jobs.moderation: NULL when nothing is checked; 'pending' until every image has a verdict; then
-- 'passed', 'review' (let through, flagged for a person), 'unchecked' (no verdict, let through under
-- MODERATION_FAIL=open) or 'rejected' (risky, or no verdict under MODERATION_FAIL=closed).
-- jobs.gpu_seconds / queue_seconds: the run's times, kept for the usage record written at the verdict.
-- usage_records.moderation: the outcome the record was written with (NULL: nothing was checked).
-- 'checking' goes last: adding an ENUM value at the end is done in place (MariaDB, MySQL 8); anywhere
-- else the table is copied. Nothing sorts by status.
ALTER TABLE jobs
    MODIFY status ENUM('submitting','queued','running','succeeded','failed','cancelled','checking') NOT NULL;
ALTER TABLE jobs
    ADD COLUMN moderation    VARCHAR(16) NULL,
    ADD COLUMN gpu_seconds   DOUBLE      NULL,
    ADD COLUMN queue_seconds DOUBLE      NULL,
    ADD KEY ix_jobs_moderation (moderation);

ALTER TABLE usage_records ADD COLUMN moderation VARCHAR(16) NULL;

-- One check per stored output image. state: 'pending' (to be asked), 'sent' (asked, waiting for
-- WeChat's push, trace_id known), 'withdraw' (risky: its object is to be deleted), 'done'.
-- suggest: pass | review | risky, NULL while unanswered or when no verdict came (then last_error says why).
CREATE TABLE moderation_checks (
    id              BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    job_id          CHAR(36)      NOT NULL,
    object_key      VARCHAR(512)  NOT NULL,
    state           VARCHAR(16)   NOT NULL,
    suggest         VARCHAR(16)   NULL,
    label           INT           NULL,
    trace_id        VARCHAR(128)  NULL,
    attempts        INT           NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(3)   NULL,
    deadline_at     DATETIME(3)   NOT NULL,
    created_at      DATETIME(3)   NOT NULL,
    answered_at     DATETIME(3)   NULL,
    last_error      VARCHAR(255)  NULL,
    UNIQUE KEY uq_moderation_object (job_id, object_key),
    UNIQUE KEY uq_moderation_trace (trace_id),
    KEY ix_moderation_due (state, next_attempt_at),
    KEY ix_moderation_deadline (state, deadline_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- WeChat's pushed verdicts (event wxa_media_check), kept by trace_id: a push may come before the
-- check that asked for it has stored its trace_id. Pruned after a day.
CREATE TABLE moderation_verdicts (
    trace_id    VARCHAR(128) NOT NULL PRIMARY KEY,
    suggest     VARCHAR(16)  NULL,
    label       INT          NULL,
    errcode     INT          NOT NULL DEFAULT 0,
    received_at DATETIME(3)  NOT NULL,
    KEY ix_verdicts_received (received_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
