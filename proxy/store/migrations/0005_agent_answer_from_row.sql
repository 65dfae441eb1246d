-- An agent's document is rendered by the sidecar, not by PostgreSQL. Register, patch and load
-- answer with the agent; `registry_write` (0004) built that document in SQL so the ledger could
-- keep it for a retry, which was a quarter of PostgreSQL's time per registration (the JSON, then
-- its conversion to jsonb). `registry_write_v2` keeps the agent's row as written in the ledger
-- instead (`response_row`, `row_to_json`, a plain copy), answers with the row and the time of
-- the write (`w_at`), and the sidecar renders the document from them with
-- `AgentRecord.public_json`: the same bytes on the first answer and on every retry, the status
-- ("active" or "unresponsive") as it was at the write. Ledger rows written before keep their
-- `response_body`, given back as before. The other answers (heartbeat, task outcome, refusals)
-- are still rendered here.
--
-- `registry_write_v2` is 0004's `registry_write` but for the lines marked `0005:`.
-- `registry_write` stays, now a wrapper that renders the agent's document from v2's answer as
-- before: during a rolling upgrade the sidecars of the previous release still call it, and
-- both kinds of sidecar answer a retry of the other's write. A later release can drop it.

ALTER TABLE operations ADD COLUMN IF NOT EXISTS response_row json;

CREATE FUNCTION registry_write_v2(
    p_kind text, p_tenant text, p_op_id text, p_request_hash text, p_actor text,
    p_request_id text, p_at timestamptz, p_target text, p_action text,
    p_max_agents integer DEFAULT NULL,
    p_name text DEFAULT NULL, p_model_family text DEFAULT NULL,
    p_max_concurrent_tasks integer DEFAULT NULL, p_capabilities boolean DEFAULT false,
    p_task_types text[] DEFAULT NULL, p_languages text[] DEFAULT NULL,
    p_specializations text[] DEFAULT NULL, p_if_match bigint DEFAULT NULL,
    p_active_tasks integer DEFAULT NULL, p_queued_tasks integer DEFAULT NULL,
    p_observed_at timestamptz DEFAULT NULL,
    p_event_id text DEFAULT NULL, p_success boolean DEFAULT NULL,
    p_quality_score double precision DEFAULT NULL, p_latency_ms double precision DEFAULT NULL,
    p_task_type text DEFAULT NULL,
    OUT w_seen boolean, OUT w_same boolean, OUT w_state text, OUT w_status integer,
    OUT w_body text, OUT w_reason text, OUT w_slug text, OUT w_detail text,
    -- 0005: w_at, the time the document is rendered for.
    OUT w_agent agents, OUT w_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    doc json;
    agent_row json;
    n integer;
    counted boolean;
BEGIN
    SELECT o.status, o.reason, o.response_status, o.response_body::text,
           o.request_hash = p_request_hash, o.response_row, o.completed_at
      INTO w_state, w_reason, w_status, w_body, w_same, agent_row, w_at
      FROM operations o
     WHERE o.tenant_id = p_tenant AND o.op_id = p_op_id;
    w_seen := FOUND;
    IF w_seen THEN
        -- 0005: the row kept for the answer, rendered for the time of the first answer.
        IF agent_row IS NOT NULL THEN
            w_agent := json_populate_record(NULL::agents, agent_row);
        END IF;
        RETURN;
    END IF;
    w_at := now();

    IF p_kind = 'register' THEN
        -- A full tenant is answered before the agent is touched: taking the slot after the
        -- insert keeps the lock order of an unregistration (agent, then tenant), and undoing
        -- an insert would take a subtransaction on every registration. A duplicate is a
        -- duplicate even in a full tenant.
        SELECT t.agent_count INTO n FROM tenants t WHERE t.tenant_id = p_tenant;
        IF n >= p_max_agents THEN
            PERFORM FROM agents a
              WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL;
            IF FOUND THEN
                w_slug := 'duplicate-agent';
                w_detail := format('agent %L is already registered', p_target);
            ELSE
                w_slug := 'registry-full';
                w_detail := format('tenant %L already has the maximum of %s agents',
                    p_tenant, p_max_agents);
            END IF;
        ELSE
            INSERT INTO agents AS a (tenant_id, agent_id, name, model_family, task_types,
                languages, specializations, max_concurrent_tasks)
            VALUES (p_tenant, p_target, p_name, p_model_family, p_task_types, p_languages,
                p_specializations, p_max_concurrent_tasks)
            ON CONFLICT (tenant_id, agent_id) DO UPDATE SET name = EXCLUDED.name,
                model_family = EXCLUDED.model_family, task_types = EXCLUDED.task_types,
                languages = EXCLUDED.languages, specializations = EXCLUDED.specializations,
                max_concurrent_tasks = EXCLUDED.max_concurrent_tasks, active_tasks = 0,
                queued_tasks = 0, load_observed_at = NULL, status = 'active',
                registered_at = now(), last_heartbeat_at = now(), updated_at = now(),
                deleted_at = NULL, task_count = 0, success_count = 0, quality_sum = 0,
                latency_ms_sum = 0, version = nextval('agent_version_seq'),
                revision = a.revision + 1
            WHERE a.deleted_at IS NOT NULL
            RETURNING a.* INTO w_agent;
            IF NOT FOUND THEN
                w_slug := 'duplicate-agent';
                w_detail := format('agent %L is already registered', p_target);
            ELSE
                -- The tenant row's lock serializes concurrent registrations.
                INSERT INTO tenants AS t (tenant_id, agent_count) VALUES (p_tenant, 1)
                ON CONFLICT (tenant_id) DO UPDATE SET agent_count = t.agent_count + 1
                WHERE t.agent_count < p_max_agents
                RETURNING t.agent_count INTO n;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'tenant % was filled by concurrent registrations', p_tenant
                        USING ERRCODE = 'serialization_failure';
                END IF;
                w_status := 201;
            END IF;
        END IF;

    ELSIF p_kind = 'patch' THEN
        -- The revision moves only when a value really changes (`proxy.registry.apply` counts
        -- the same way), so a patch repeated with the same values leaves ETags valid.
        UPDATE agents a SET
            name = coalesce(p_name, a.name),
            model_family = coalesce(p_model_family, a.model_family),
            max_concurrent_tasks = coalesce(p_max_concurrent_tasks, a.max_concurrent_tasks),
            task_types = CASE WHEN p_capabilities THEN p_task_types ELSE a.task_types END,
            languages = CASE WHEN p_capabilities THEN p_languages ELSE a.languages END,
            specializations = CASE WHEN p_capabilities
                THEN p_specializations ELSE a.specializations END,
            revision = a.revision + CASE WHEN
                   (p_name IS NOT NULL AND a.name IS DISTINCT FROM p_name)
                OR (p_model_family IS NOT NULL AND a.model_family IS DISTINCT FROM p_model_family)
                OR (p_max_concurrent_tasks IS NOT NULL
                    AND a.max_concurrent_tasks IS DISTINCT FROM p_max_concurrent_tasks)
                OR (p_capabilities AND (a.task_types IS DISTINCT FROM p_task_types
                    OR a.languages IS DISTINCT FROM p_languages
                    OR a.specializations IS DISTINCT FROM p_specializations))
                THEN 1 ELSE 0 END,
            updated_at = now(), version = nextval('agent_version_seq')
        WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL
          AND (p_if_match IS NULL OR a.revision = p_if_match)
        RETURNING a.* INTO w_agent;
        IF FOUND THEN
            w_status := 200;
        ELSE
            SELECT a.revision INTO n FROM agents a
             WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL;
            IF NOT FOUND THEN
                w_slug := 'not-found';
                w_detail := format('agent %L is not registered', p_target);
            ELSE
                w_slug := 'precondition-failed';
                w_detail := format('If-Match revision %s does not match current revision %s',
                    coalesce(p_if_match::text, 'None'), n);
            END IF;
        END IF;

    ELSIF p_kind = 'load' THEN
        UPDATE agents a SET active_tasks = p_active_tasks, queued_tasks = p_queued_tasks,
            load_observed_at = p_observed_at, updated_at = now(),
            version = nextval('agent_version_seq')
        WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL
          AND (a.load_observed_at IS NULL OR a.load_observed_at <= p_observed_at)
        RETURNING a.* INTO w_agent;
        IF NOT FOUND THEN
            -- A report older than the one held loses (last writer wins by observed_at): the
            -- answer is the agent as it stands.
            SELECT a.* INTO w_agent FROM agents a
             WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL;
            IF NOT FOUND THEN
                w_slug := 'not-found';
                w_detail := format('agent %L is not registered', p_target);
            END IF;
        END IF;
        w_status := 200;

    ELSIF p_kind = 'heartbeat' THEN
        UPDATE agents a SET last_heartbeat_at = GREATEST(a.last_heartbeat_at, p_observed_at),
            status = 'active', updated_at = now(), version = nextval('agent_version_seq')
        WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL
        RETURNING a.* INTO w_agent;
        IF FOUND THEN
            w_status := 200;
            doc := json_build_object(
                'agent_id', w_agent.agent_id,
                'status', 'active',
                'last_heartbeat_at', registry_json_time(w_agent.last_heartbeat_at),
                'version', w_agent.version);
        ELSE
            w_slug := 'not-found';
            w_detail := format('agent %L is not registered', p_target);
        END IF;

    ELSIF p_kind = 'performance' THEN
        -- Each event once: one already counted leaves the sums alone.
        INSERT INTO performance_events (tenant_id, event_id, agent_id, success, quality_score,
            latency_ms, task_type)
        SELECT p_tenant, p_event_id, p_target, p_success, p_quality_score, p_latency_ms,
            p_task_type
        WHERE EXISTS (SELECT FROM agents a
            WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL)
        ON CONFLICT (tenant_id, event_id) DO NOTHING;
        counted := FOUND;
        IF counted THEN
            UPDATE agents a SET task_count = a.task_count + 1,
                success_count = a.success_count + CASE WHEN p_success THEN 1 ELSE 0 END,
                quality_sum = a.quality_sum + p_quality_score,
                latency_ms_sum = a.latency_ms_sum + p_latency_ms, updated_at = now(),
                version = nextval('agent_version_seq')
            WHERE a.tenant_id = p_tenant AND a.agent_id = p_target
            RETURNING a.* INTO w_agent;
            w_status := 201;
        ELSE
            SELECT a.* INTO w_agent FROM agents a
             WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL;
            w_status := 200;
        END IF;
        IF w_agent.agent_id IS NULL THEN
            w_slug := 'not-found';
            w_detail := format('agent %L is not registered', p_target);
        ELSE
            doc := json_build_object(
                'agent_id', w_agent.agent_id,
                'event_id', p_event_id,
                'counted', counted,
                'performance', registry_performance_json(w_agent.task_count,
                    w_agent.success_count, w_agent.quality_sum, w_agent.latency_ms_sum));
        END IF;

    ELSIF p_kind = 'unregister' THEN
        UPDATE agents a SET deleted_at = now(), updated_at = now(),
            version = nextval('agent_version_seq')
        WHERE a.tenant_id = p_tenant AND a.agent_id = p_target AND a.deleted_at IS NULL
        RETURNING a.* INTO w_agent;
        IF FOUND THEN
            UPDATE tenants t SET agent_count = t.agent_count - 1 WHERE t.tenant_id = p_tenant;
        END IF;
        w_status := 204;

    ELSIF p_kind = 'admin' THEN
        -- An admin action has no effect on the registry; it is written for its audit row.
        w_status := 204;

    ELSE
        RAISE EXCEPTION 'unknown write kind %', p_kind USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF w_slug IS NOT NULL THEN
        w_agent := NULL;
        w_state := 'rejected';
        w_status := CASE w_slug WHEN 'not-found' THEN 404
            WHEN 'precondition-failed' THEN 412 ELSE 409 END;
        w_reason := w_slug || ': ' || w_detail;
        doc := registry_problem_json(w_slug, w_detail);
    ELSE
        w_state := 'applied';
        IF doc IS NULL AND w_status <> 204 THEN
            -- 0005: the agent's document is the sidecar's to render, from w_agent and w_at.
            agent_row := row_to_json(w_agent);
        END IF;
    END IF;
    w_body := doc::text;

    WITH ledger AS (
        INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, reason,
            response_status, response_body, response_row)
        VALUES (p_tenant, p_op_id, p_kind, p_request_hash, w_state, w_reason, w_status,
            doc::jsonb, agent_row))
    INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, op_id, at)
    VALUES (p_tenant, p_actor, p_action, p_target,
        CASE WHEN w_slug IS NULL THEN 'applied' ELSE 'rejected:' || w_slug END,
        p_request_id, p_op_id, coalesce(p_at, now()));
END;
$$;

-- 0004's signature and answer, for sidecars of the previous release. A document rendered
-- here from the ledger's row (a retry) says the agent's status as of now, as 0004's rendering
-- of a new write did; the document stored by 0004 itself said it as of the first answer.
CREATE OR REPLACE FUNCTION registry_write(
    p_kind text, p_tenant text, p_op_id text, p_request_hash text, p_actor text,
    p_request_id text, p_at timestamptz, p_target text, p_action text,
    p_max_agents integer DEFAULT NULL,
    p_name text DEFAULT NULL, p_model_family text DEFAULT NULL,
    p_max_concurrent_tasks integer DEFAULT NULL, p_capabilities boolean DEFAULT false,
    p_task_types text[] DEFAULT NULL, p_languages text[] DEFAULT NULL,
    p_specializations text[] DEFAULT NULL, p_if_match bigint DEFAULT NULL,
    p_active_tasks integer DEFAULT NULL, p_queued_tasks integer DEFAULT NULL,
    p_observed_at timestamptz DEFAULT NULL,
    p_event_id text DEFAULT NULL, p_success boolean DEFAULT NULL,
    p_quality_score double precision DEFAULT NULL, p_latency_ms double precision DEFAULT NULL,
    p_task_type text DEFAULT NULL,
    OUT w_seen boolean, OUT w_same boolean, OUT w_state text, OUT w_status integer,
    OUT w_body text, OUT w_reason text, OUT w_slug text, OUT w_detail text,
    OUT w_agent agents)
LANGUAGE sql AS $$
    SELECT w.w_seen, w.w_same, w.w_state, w.w_status,
        CASE WHEN w.w_body IS NULL AND (w.w_agent).agent_id IS NOT NULL AND w.w_status <> 204
            THEN registry_agent_json((w.w_agent).agent_id, (w.w_agent).name,
                (w.w_agent).model_family, (w.w_agent).task_types, (w.w_agent).languages,
                (w.w_agent).specializations, (w.w_agent).max_concurrent_tasks,
                (w.w_agent).active_tasks, (w.w_agent).queued_tasks, (w.w_agent).registered_at,
                (w.w_agent).last_heartbeat_at, (w.w_agent).updated_at, (w.w_agent).version,
                (w.w_agent).revision, (w.w_agent).task_count, (w.w_agent).success_count,
                (w.w_agent).quality_sum, (w.w_agent).latency_ms_sum)::text
            ELSE w.w_body END,
        w.w_reason, w.w_slug, w.w_detail,
        -- 0004 answered a seen op id without the agent.
        CASE WHEN w.w_seen THEN NULL ELSE w.w_agent END
    FROM registry_write_v2(p_kind, p_tenant, p_op_id, p_request_hash, p_actor, p_request_id,
        p_at, p_target, p_action, p_max_agents, p_name, p_model_family, p_max_concurrent_tasks,
        p_capabilities, p_task_types, p_languages, p_specializations, p_if_match,
        p_active_tasks, p_queued_tasks, p_observed_at, p_event_id, p_success, p_quality_score,
        p_latency_ms, p_task_type) w
$$;
