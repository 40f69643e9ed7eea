-- Billing readers page usage records by a sequence number that is assigned in
-- commit order (auto-increment ids are allocated at insert and may commit out of
-- order, so a reader paging by them could skip a record that commits late).
ALTER TABLE usage_records ADD COLUMN seq BIGINT NULL, ADD UNIQUE KEY uq_usage_seq (seq);
