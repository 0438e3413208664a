-- perdure PostgreSQL schema, version 3: suspended workflows, messages, events, approvals.

-- A WAITING workflow holds no thread and no owner: it is claimed again when its timer is due
-- (wake_at), when a message arrives on the topic it waits for, or when it is cancelled.
ALTER TABLE workflows ADD COLUMN wake_at DOUBLE PRECISION;

ALTER TABLE workflows ADD COLUMN wait_topic TEXT;

CREATE INDEX workflows_waiting ON workflows (wake_at) WHERE status = 'WAITING';

CREATE TABLE messages (
    seq             BIGSERIAL PRIMARY KEY,
    workflow_id     TEXT NOT NULL,
    topic           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    idempotency_key TEXT,
    sent_at         DOUBLE PRECISION NOT NULL,
    consumed_by     TEXT
);

CREATE INDEX messages_unconsumed ON messages (workflow_id, topic, seq) WHERE consumed_by IS NULL;

CREATE UNIQUE INDEX messages_idempotency ON messages (workflow_id, topic, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE events (
    workflow_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (workflow_id, key)
);

CREATE TABLE approvals (
    workflow_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    details      TEXT NOT NULL,
    status       TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    decided_at   DOUBLE PRECISION,
    decided_by   TEXT,
    comment      TEXT,
    PRIMARY KEY (workflow_id, name)
);
