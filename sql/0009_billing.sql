-- Billable usage records: who ran the job, as the login provider knows them, and what it cost.
--
-- provider, subject: the user's login (e.g. 'wechat' and the openid), copied from users when the
-- record is written, so a billing job needs no lookup.
-- credits: what the job cost under its workflow's "price", rounded half up to 4 places; NULL when
-- the workflow sets no price (or its file was gone when the job finished).
-- price: the price applied, as the workflow file stated it then ({"per_job": 1, ...}); NULL with credits.
--
-- Records are written once and never updated, so records written before this file keep NULL in
-- all four columns (no backfill). The columns are added last, which MariaDB and MySQL 8 do in place.
ALTER TABLE usage_records
    ADD COLUMN provider VARCHAR(16)   NULL,
    ADD COLUMN subject  VARCHAR(128)  NULL,
    ADD COLUMN credits  DECIMAL(20,4) NULL,
    ADD COLUMN price    JSON          NULL;
