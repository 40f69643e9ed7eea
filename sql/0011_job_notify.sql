-- POST /v1/jobs {"notify": true}: push a WeChat subscribe message to the user when the job is final
-- (shared/outbox.py writes a kind='subscribe' outbox row with the final state; listener/outbox_sender.py
-- sends it). Added last, with a constant default: in place on MariaDB and MySQL 8.
ALTER TABLE jobs ADD COLUMN notify TINYINT(1) NOT NULL DEFAULT 0;
