-- perdure SQLite schema, version 4: queues.

-- An ENQUEUED workflow waits for its queue to admit it (concurrency, rate limit, priority);
-- dequeued_at records when a worker took it off the queue (the rate limit counts these).
ALTER TABLE workflows ADD COLUMN queue TEXT;

ALTER TABLE workflows ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;

ALTER TABLE workflows ADD COLUMN dequeued_at REAL;

CREATE INDEX workflows_enqueued ON workflows (queue, priority, created_at)
    WHERE status = 'ENQUEUED';

CREATE INDEX workflows_dequeued ON workflows (queue, dequeued_at) WHERE queue IS NOT NULL;

CREATE INDEX workflows_queue_active ON workflows (queue)
    WHERE queue IS NOT NULL AND status IN ('PENDING', 'RUNNING', 'WAITING');
