-- When ComfyUI says a held job's run ended (epoch seconds, its history's clock), kept until the
-- content check's verdict shows the job: gateway_completion_latency_seconds is observed then
-- (ComfyUI's end → the images visible), as it is at once for jobs nobody checks.
ALTER TABLE jobs ADD COLUMN run_ended_at DOUBLE NULL;
