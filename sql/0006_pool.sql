-- A pool of ComfyUI servers behind one queue that the gateway owns.
--
-- A job waits in the gateway queue (status 'queued', backend_id NULL) until a server that can
-- run it has a free slot; then it is claimed for that server ('submitting', backend_id set) and
-- sent. Waiting jobs are ordered by (fair_rank, created_at, id): fair_rank is the job's round,
-- fixed at submit (shared/pool/queue.py), so a user's k-th waiting job goes after every other
-- user's (k-1)-th.
ALTER TABLE jobs
    ADD COLUMN fair_rank     INT          NOT NULL DEFAULT 0,
    ADD COLUMN needs         JSON         NULL,              -- node classes and chosen values it needs
    ADD COLUMN model         VARCHAR(255) NULL,              -- its checkpoint (model affinity)
    ADD COLUMN inputs        JSON         NULL,              -- input images to send with the prompt
    ADD COLUMN servers       INT          NOT NULL DEFAULT 1, -- servers able to run it at submit (eta)
    -- those servers as bits (1 << backend id % 64): queue_position counts only jobs competing for them
    ADD COLUMN capable       BIGINT UNSIGNED NOT NULL DEFAULT 18446744073709551615,
    ADD COLUMN lost_retries  INT          NOT NULL DEFAULT 0, -- times it was retried after its server lost it
    -- the fair order, covering the queue-position count (capable included)
    ADD KEY ix_jobs_waiting (status, backend_id, fair_rank, created_at, id, capable),
    -- each user's rounds (the current round at submit)
    ADD KEY ix_jobs_waiting_user (status, backend_id, user_id, fair_rank);

-- What each server offers (from /object_info), whether it takes new jobs, and how many
-- prompts it may hold at once.
ALTER TABLE backends
    ADD COLUMN state              ENUM('active','draining') NOT NULL DEFAULT 'active',
    ADD COLUMN slots              INT          NULL,          -- NULL: COMFYUI_SLOTS
    ADD COLUMN capabilities       JSON         NULL,          -- {"classes": [...], "choices": {"Class.input": [...]}}
    ADD COLUMN capabilities_hash  CHAR(16)     NULL,
    ADD COLUMN capabilities_at    DATETIME(3)  NULL,
    ADD COLUMN refresh_requested  TINYINT(1)   NOT NULL DEFAULT 0,
    ADD COLUMN last_model         VARCHAR(255) NULL;         -- checkpoint of the last job sent there

-- Every listener that serves a backend, owner or standby, with when it was last seen alive.
CREATE TABLE backend_listeners (
    backend_id  INT          NOT NULL,
    owner       VARCHAR(64)  NOT NULL,
    seen_at     DATETIME(3)  NOT NULL,
    PRIMARY KEY (backend_id, owner)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Mean run time of each workflow, kept by the listener as jobs succeed (eta_seconds): every
-- instance reads the same number.
CREATE TABLE workflow_stats (
    workflow     VARCHAR(64)  NOT NULL PRIMARY KEY,
    run_seconds  DOUBLE       NOT NULL,
    samples      INT          NOT NULL,
    updated_at   DATETIME(3)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
