-- Per-user limits set by an operator (`gateway users limits ID --active N --daily N`), read by
-- check_job_limits in the submit transaction. NULL: the setting (MAX_ACTIVE_JOBS, DAILY_JOB_QUOTA)
-- applies; 0: no limit. No row: both settings apply.
CREATE TABLE user_limits (
    user_id          CHAR(36)     NOT NULL PRIMARY KEY,
    max_active_jobs  INT          NULL,
    daily_job_quota  INT          NULL,
    updated_at       DATETIME(3)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
