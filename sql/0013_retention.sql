-- Retention (`gateway cleanup`, shared/retention/): the indexes its batches read by, so an hourly run
-- costs the rows it deletes, not a scan of every job, upload or event ever kept.
--
-- ix_jobs_finished: final jobs by finish time (RETENTION_DAYS), one status at a time.
-- ix_jobs_preview: the jobs that still have a live preview (a prefix of one character is enough to
-- find the non-NULL ones; preview_key changes only while a job runs).
-- ix_uploads_expires: uploads past their usable day (RETENTION_UPLOADS_HOURS).
-- ix_outbox_job: the events of the jobs a batch deletes (without it that DELETE scans, and locks, the
-- whole outbox the senders claim from).
ALTER TABLE jobs
    ADD KEY ix_jobs_finished (status, finished_at),
    ADD KEY ix_jobs_preview (preview_key(1));

ALTER TABLE uploads ADD KEY ix_uploads_expires (expires_at);

ALTER TABLE outbox ADD KEY ix_outbox_job (job_id);
