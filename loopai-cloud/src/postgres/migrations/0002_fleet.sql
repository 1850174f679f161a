-- Loopai reference cloud, PostgreSQL schema v2: the fleet's read side (the query API and
-- the dashboard), kept at ingest so that no request scans the batches.

-- Per task, UTC day (of the batch's timestamp) and program version: the sums of the
-- accepted batches' metrics (latency percentiles weighted by executions).
CREATE TABLE fleet_daily (
    task_id        text NOT NULL,
    day            date NOT NULL,
    version        bigint NOT NULL,
    executions     bigint NOT NULL,
    errors         bigint NOT NULL,
    abstains       bigint NOT NULL,
    sampled        bigint NOT NULL,
    validations    bigint NOT NULL,
    matches        bigint NOT NULL,
    oracle_cost    double precision NOT NULL,
    batches        bigint NOT NULL,
    latency_weight bigint NOT NULL,
    p50            double precision NOT NULL,
    p95            double precision NOT NULL,
    p99            double precision NOT NULL,
    max_latency    double precision NOT NULL,
    PRIMARY KEY (task_id, day, version)
);

-- The rollout events the batches carried.
CREATE TABLE fleet_rollouts (
    id             bigserial PRIMARY KEY,
    task_id        text NOT NULL,
    deployment_id  text,
    at             text NOT NULL,
    kind           text NOT NULL,
    stable_version bigint NOT NULL,
    canary_version bigint NOT NULL,
    stage          bigint NOT NULL,
    fraction       double precision NOT NULL,
    reason         text NOT NULL
);
CREATE INDEX fleet_rollouts_task ON fleet_rollouts (task_id, at);

-- Per deployment and task: when it was last heard from, its last heartbeat, and the
-- version of its last batch.
CREATE TABLE fleet_deployments (
    deployment_id text NOT NULL,
    task_id       text NOT NULL,
    last_seen_ms  bigint NOT NULL,
    heartbeat     jsonb,
    batch_version bigint,
    PRIMARY KEY (deployment_id, task_id)
);
CREATE INDEX fleet_deployments_task ON fleet_deployments (task_id);
