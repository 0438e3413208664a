-- perdure PostgreSQL schema, version 2: retries, cancellation and deadlines.

ALTER TABLE workflows ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

ALTER TABLE workflows ADD COLUMN deadline_at DOUBLE PRECISION;

-- Takeovers in a row without a new journal entry (a poison workflow keeps them growing), and
-- the journal length at the last claim, to tell progress from a crash loop.
ALTER TABLE workflows ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0;

ALTER TABLE workflows ADD COLUMN claimed_steps INTEGER NOT NULL DEFAULT 0;

-- One row per failed attempt of a step that is (or was) retried: the count and each failure
-- survive a crash between attempts, and retry_at lets a backoff wait resume with the time left.
CREATE TABLE step_attempts (
    workflow_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    error       TEXT NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    failed_at   DOUBLE PRECISION NOT NULL,
    retry_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (workflow_id, key, attempt)
);
