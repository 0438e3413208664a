-- perdure PostgreSQL schema, version 6: rate limits of model calls.

-- One row per model call taken under a rate limit (key: "<provider>:<model>"): the requests
-- limit counts rows by taken_at, the tokens limit sums tokens by charged_at (when the call's
-- reported usage was recorded), both by the database's clock. Rows older than the window are
-- deleted as calls are taken.
CREATE TABLE rate_calls (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        TEXT NOT NULL,
    taken_at   DOUBLE PRECISION NOT NULL,
    tokens     BIGINT NOT NULL DEFAULT 0,
    charged_at DOUBLE PRECISION
);

CREATE INDEX rate_calls_taken ON rate_calls (key, taken_at);

CREATE INDEX rate_calls_charged ON rate_calls (key, charged_at) WHERE charged_at IS NOT NULL;

-- A provider's 429 with Retry-After: no call of the key starts before blocked_until.
CREATE TABLE rate_blocks (
    key           TEXT PRIMARY KEY,
    blocked_until DOUBLE PRECISION NOT NULL
);
