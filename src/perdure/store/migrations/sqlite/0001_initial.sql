-- perdure SQLite schema, version 1. Never edit a shipped migration: add a new numbered file.

CREATE TABLE workflows (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    owner       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    recoveries  INTEGER NOT NULL DEFAULT 0,
    epoch       INTEGER NOT NULL DEFAULT 1
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
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (workflow_id, key)
) WITHOUT ROWID;

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL,
    expires_at   REAL NOT NULL
);
