-- Recent run times per workflow (eta_seconds) come from finished jobs of that workflow.
ALTER TABLE jobs ADD KEY ix_jobs_workflow_finished (workflow, status, finished_at);
