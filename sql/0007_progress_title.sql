-- The title of the node a running job is on (its workflow's _meta.title, else the node's class),
-- written by the listener in the same UPDATE as progress_node: a status poll reads it from the row
-- instead of loading the workflow files. Jobs running when this is applied show no title until
-- their next progress write.
ALTER TABLE jobs ADD COLUMN progress_title VARCHAR(255) NULL AFTER progress_node;
