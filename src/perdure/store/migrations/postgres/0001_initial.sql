-- perdure PostgreSQL schema, version 1. Never edit a shipped migration: add a new numbered file.
-- Times are epoch seconds (DOUBLE PRECISION), as in the SQLite schema; flags are INTEGER 0/1.

CREATE TABLE workflows (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    owner       TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    recoveries  INTEGER NOT NULL DEFAULT 0,
    epoch       BIGINT NOT NULL DEFAULT 1
);

CREATE INDEX workflows_unfinished ON workflows (owner) WHERE status IN ('PENDING', 'RUNNING');

CREATE INDEX workflows_created ON workflows (created_at);

CREATE TABLE steps (
    workflow_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (workflow_id, key)
);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
);
