-- The agent registry. Every table carries tenant_id and every query filters on it.

-- One sequence for every agent change: an agent's version is its ETag, and the highest version a
-- replica has seen is the watermark it catches up from after a reconnect.
CREATE SEQUENCE IF NOT EXISTS agent_version_seq;

CREATE TABLE IF NOT EXISTS agents (
    tenant_id            text        NOT NULL,
    agent_id             text        NOT NULL,
    name                 text        NOT NULL,
    model_family         text        NOT NULL,
    task_types           text[]      NOT NULL,
    languages            text[]      NOT NULL DEFAULT '{}',
    specializations      text[]      NOT NULL DEFAULT '{}',
    max_concurrent_tasks integer     NOT NULL DEFAULT 10 CHECK (max_concurrent_tasks > 0),
    active_tasks         integer     NOT NULL DEFAULT 0 CHECK (active_tasks >= 0),
    queued_tasks         integer     NOT NULL DEFAULT 0 CHECK (queued_tasks >= 0),
    load_observed_at     timestamptz,
    status               text        NOT NULL DEFAULT 'active',
    registered_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    version              bigint      NOT NULL DEFAULT nextval('agent_version_seq'),
    deleted_at           timestamptz,
    -- Performance as sums, not averages: updates commute, so replays and concurrent posts are exact.
    task_count           bigint           NOT NULL DEFAULT 0,
    success_count        bigint           NOT NULL DEFAULT 0,
    quality_sum          double precision NOT NULL DEFAULT 0,
    latency_ms_sum       double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, agent_id)
);

CREATE INDEX IF NOT EXISTS agents_task_types_idx ON agents USING gin (task_types);
CREATE INDEX IF NOT EXISTS agents_version_idx ON agents (version);

-- Live agent count per tenant: the capacity check takes this row's lock, so concurrent
-- registrations cannot overshoot max_agents.
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   text    PRIMARY KEY,
    agent_count integer NOT NULL DEFAULT 0 CHECK (agent_count >= 0)
);

-- Each task outcome once: a replayed or retried event_id is not counted twice.
CREATE TABLE IF NOT EXISTS performance_events (
    tenant_id     text             NOT NULL,
    event_id      text             NOT NULL,
    agent_id      text             NOT NULL,
    success       boolean          NOT NULL,
    quality_score double precision NOT NULL,
    latency_ms    double precision NOT NULL,
    task_type     text,
    recorded_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

-- The idempotency ledger for Idempotency-Key and for journal replay.
CREATE TABLE IF NOT EXISTS operations (
    tenant_id       text        NOT NULL,
    op_id           text        NOT NULL,
    kind            text        NOT NULL,
    request_hash    text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('applied', 'rejected')),
    reason          text,
    response_status integer     NOT NULL,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, op_id)
);

CREATE TABLE IF NOT EXISTS audit_log (
    id         bigserial   PRIMARY KEY,
    tenant_id  text        NOT NULL,
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target     text,
    outcome    text        NOT NULL,
    request_id text,
    op_id      text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_log_tenant_at_idx ON audit_log (tenant_id, at);

-- Tell every sidecar's replica about each change. The row itself rides along when it fits in a
-- notification (8000 bytes), which saves the listener a round trip; otherwise only its key.
CREATE OR REPLACE FUNCTION registry_notify_agent_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    payload := json_build_object('row', row_to_json(NEW))::text;
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object(
            'tenant_id', NEW.tenant_id, 'agent_id', NEW.agent_id, 'version', NEW.version)::text;
    END IF;
    PERFORM pg_notify('registry_agents', payload);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS agents_notify ON agents;
CREATE TRIGGER agents_notify
    AFTER INSERT OR UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION registry_notify_agent_change();
