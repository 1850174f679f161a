-- Loopai reference cloud, PostgreSQL schema v1. Applied once by the first instance that
-- starts (under an advisory lock), recorded in loopai_schema_migrations.

-- Telemetry batches: one row per accepted batch, as received (unknown fields kept).
-- The primary key is what de-duplicates uploads across every instance.
CREATE TABLE telemetry_batches (
    batch_id      text PRIMARY KEY,
    task_id       text NOT NULL,
    deployment_id text,
    received_at   timestamptz NOT NULL,
    -- The UTC day of receipt (the file backend's YYYY-MM-DD.jsonl).
    day           date NOT NULL,
    batch         jsonb NOT NULL
);
CREATE INDEX telemetry_batches_task_day ON telemetry_batches (task_id, day);
CREATE INDEX telemetry_batches_deployment ON telemetry_batches (deployment_id, received_at)
    WHERE deployment_id IS NOT NULL;

-- The tasks that have telemetry (what the improvement engine walks), kept on insert so
-- that listing them does not scan the batches.
CREATE TABLE telemetry_tasks (
    task_id    text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now()
);

-- The execution summaries of well-formed (loopai.telemetry/1) batches, one row each.
CREATE TABLE execution_summaries (
    batch_id        text NOT NULL REFERENCES telemetry_batches (batch_id) ON DELETE CASCADE,
    ordinal         integer NOT NULL,
    task_id         text NOT NULL,
    -- The batch's program_version.
    program_version bigint NOT NULL,
    day             date NOT NULL,
    execution_id    uuid NOT NULL,
    summary         jsonb NOT NULL,
    PRIMARY KEY (batch_id, ordinal)
);
CREATE INDEX execution_summaries_task_version_day
    ON execution_summaries (task_id, program_version, day);
CREATE INDEX execution_summaries_task_execution ON execution_summaries (task_id, execution_id);

-- The sampled validations of well-formed batches, one row each.
CREATE TABLE validations (
    batch_id        text NOT NULL REFERENCES telemetry_batches (batch_id) ON DELETE CASCADE,
    ordinal         integer NOT NULL,
    task_id         text NOT NULL,
    program_version bigint NOT NULL,
    day             date NOT NULL,
    execution_id    uuid NOT NULL,
    matched         boolean NOT NULL,
    validation      jsonb NOT NULL,
    PRIMARY KEY (batch_id, ordinal)
);
CREATE INDEX validations_task_version_day ON validations (task_id, program_version, day);

-- Artifact versions, immutable, bodies included (they are small: a program.json and its
-- metadata, packed), so that every instance serves every version without a shared disk.
CREATE TABLE artifact_versions (
    task_id        text NOT NULL,
    version        bigint NOT NULL CHECK (version >= 1),
    -- RFC 3339 as published (what the versions list shows).
    created_at     text NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now(),
    program_sha256 text NOT NULL,
    archive_sha256 text NOT NULL,
    archive_bytes  bigint NOT NULL,
    -- The versions-list entry, unsigned (instances sign it with their key when serving).
    info           jsonb NOT NULL,
    metadata       jsonb NOT NULL,
    program        bytea NOT NULL,
    archive        bytea NOT NULL,
    PRIMARY KEY (task_id, version)
);

-- The improvement engine's state per task (the file backend's improvement/<task>.json).
CREATE TABLE improvement_state (
    task_id    text PRIMARY KEY,
    state      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Escalations to a human (the file backend's escalations.jsonl).
CREATE TABLE escalations (
    id           bigserial PRIMARY KEY,
    task_id      text NOT NULL,
    escalated_at timestamptz NOT NULL DEFAULT now(),
    record       jsonb NOT NULL
);
CREATE INDEX escalations_task ON escalations (task_id, escalated_at);

-- Deployments seen: by their telemetry (last_batch_at) and their heartbeats.
CREATE TABLE deployments (
    deployment_id     text PRIMARY KEY,
    first_seen        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,
    last_batch_at     timestamptz,
    last_heartbeat    jsonb,
    last_heartbeat_at timestamptz
);
CREATE INDEX deployments_last_seen ON deployments (last_seen);
