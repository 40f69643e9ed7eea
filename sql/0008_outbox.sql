-- Events for the operator's backend (webhooks), written in the same transaction as what they tell
-- (a job's final state, its usage record) and sent afterwards by the listener (listener/outbox_sender.py).
--
-- One row per event, keyed by (kind, event_type, job_id): a finalization that runs twice writes it once.
-- A row waits to be sent while next_attempt_at is set (the sender claims the due ones with
-- FOR UPDATE SKIP LOCKED and moves next_attempt_at past its POST before sending). Sent: sent_at set,
-- next_attempt_at NULL. Given up (still failing a day after its first attempt): given_up_at set,
-- next_attempt_at NULL. `gateway webhooks replay` sets next_attempt_at again (same event_id).
CREATE TABLE outbox (
    id               BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id         CHAR(36)     NOT NULL,            -- the Standard Webhooks webhook-id, the same on every attempt
    kind             VARCHAR(16)  NOT NULL,            -- 'webhook' (the operator's endpoint), more later
    event_type       VARCHAR(32)  NOT NULL,            -- job.succeeded, job.failed, job.cancelled, usage.recorded
    job_id           CHAR(36)     NOT NULL,
    payload          JSON         NOT NULL,            -- the event's data, as rendered when it was written
    created_at       DATETIME(3)  NOT NULL,
    attempts         INT          NOT NULL DEFAULT 0,  -- POSTs started (counted when claimed)
    next_attempt_at  DATETIME(3)  NULL,                -- due at (NULL once sent or given up)
    retry_until      DATETIME(3)  NULL,                -- a day after the first attempt (of this round)
    sent_at          DATETIME(3)  NULL,
    given_up_at      DATETIME(3)  NULL,
    last_error       VARCHAR(255) NULL,                -- "HTTP 503", "timed out": never a URL or a secret
    UNIQUE KEY uq_outbox_event (event_id),
    UNIQUE KEY uq_outbox_job_event (kind, event_type, job_id),
    KEY ix_outbox_due (kind, next_attempt_at),
    KEY ix_outbox_created (kind, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
