-- perdure SQLite schema, version 7: code versions, forks, call fingerprints.

-- The version of the code that started a workflow (an application version, or a hash of
-- the workflow's source and step names). A worker takes over only the versions it can run;
-- NULL (runs recorded before this version of the schema) is taken by any.
ALTER TABLE workflows ADD COLUMN version TEXT;

-- A fork names the run it was copied from and the journal position it re-executes from.
ALTER TABLE workflows ADD COLUMN forked_from TEXT;

ALTER TABLE workflows ADD COLUMN forked_at INTEGER;

-- What a journaled call was made with (a model call's model, prompt and tool schemas, as
-- JSON of hashes), compared on replay to report a changed prompt.
ALTER TABLE steps ADD COLUMN fingerprint TEXT;
