-- perdure PostgreSQL schema, version 5: blobs.

-- Payloads above the store's blob threshold (a step's output, a workflow's inputs or result),
-- stored once under the SHA-256 of their bytes; journal rows keep a reference to them.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,
    data       BYTEA NOT NULL,
    size       BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL DEFAULT EXTRACT(EPOCH FROM clock_timestamp())
);
