-- Fixed-window request counters (per user, per client IP), shared by every function instance.
CREATE TABLE rate_limits (
    bucket        VARCHAR(160) NOT NULL,
    window_start  DATETIME     NOT NULL,
    hits          INT          NOT NULL,
    PRIMARY KEY (bucket, window_start)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
