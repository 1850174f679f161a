-- Loopai reference cloud, PostgreSQL schema v3: the task specifications the improvement
-- engine learns from, shared by every instance (imported from each instance's
-- DIR/specs/<task>.json at start and whenever a file changes).

CREATE TABLE task_specs (
    task_id    text PRIMARY KEY,
    -- The specification file's bytes as imported (its sha256 is what escalations record).
    body       bytea NOT NULL,
    sha256     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
