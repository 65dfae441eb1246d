-- A tenant's registrations in parallel. Until 0004 each one updated its tenant's single count
-- row and held that row's lock until it committed, so a tenant's registrations ran one at a
-- time in PostgreSQL, each waiting for the commits (and WAL flushes) of those before it.
-- The count is now kept in 16 rows per tenant ("slots"), an agent counted in the slot its id
-- hashes to; the tenant's count is their sum. Far from the limit a registration locks only its
-- own slot; within 16 of it, every slot, so the limit stays exact (see `registry_write`).
-- The existing count stays in slot 0, and a slot may go below zero (an agent counted in slot 0
-- unregistered from its own slot): only the sum has a meaning.

ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_agent_count_check;
ALTER TABLE tenants ADD COLUMN slot smallint NOT NULL DEFAULT 0;
ALTER TABLE tenants DROP CONSTRAINT tenants_pkey;
ALTER TABLE tenants ADD PRIMARY KEY (tenant_id, slot);

-- The slot an agent is counted in. Should it ever change (a hash of another PostgreSQL), the
-- counts stay right: an unregistration takes one off whichever slot, and only the sum counts.
CREATE OR REPLACE FUNCTION registry_slot(agent_id text) RETURNS smallint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (hashtext(agent_id) & 15)::smallint
$$;

-- One write, exactly once per (tenant, op id). Arguments by kind (unused ones stay NULL):
--   register     p_max_agents, p_name, p_model_family, p_task_types, p_languages,
--                p_specializations, p_max_concurrent_tasks
--   patch        p_if_match, and whichever of p_name, p_model_family, p_max_concurrent_tasks
--                are changed (NULL: unchanged; none of them can be NULL), p_capabilities with
--                p_task_types, p_languages, p_specializations when the capabilities are
--   load         p_active_tasks, p_queued_tasks, p_observed_at
--   heartbeat    p_observed_at
--   performance  p_event_id, p_success, p_quality_score, p_latency_ms, p_task_type
--   unregister, admin: none
-- p_target is what the audit row names (the agent id, or an admin action's target) and
-- p_action the audit row's action.
--
-- An op id seen before: w_seen, with the stored status, answer and reason, and w_same, whether
-- the request hash matches; nothing else happens. Otherwise w_state is 'applied' or 'rejected'
-- (then w_slug and w_detail say why), w_body is the answer, and w_agent the agent's row after
-- the write (NULL when there is none).
--
-- Two requests under one new op id at once: the second one's ledger insert waits for the first
-- and fails on the primary key, so its statement, effect included, is undone; sent again, it
-- finds the first one's answer. A tenant that registrations in flight could take past its
-- limit: serialization_failure, the statement is undone and, sent again, is counted exactly.
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
LANGUAGE plpgsql AS $$
DECLARE
    doc json;
    -- The number of count rows per tenant (registry_slot's range).
    slots CONSTANT integer := 16;
    near boolean;
    n integer;
    counted boolean;
BEGIN
    SELECT o.status, o.reason, o.response_status, o.response_body::text,
           o.request_hash = p_request_hash
      INTO w_state, w_reason, w_status, w_body, w_same
      FROM operations o
     WHERE o.tenant_id = p_tenant AND o.op_id = p_op_id;
    w_seen := FOUND;
    IF w_seen THEN
        RETURN;
    END IF;

    IF p_kind = 'register' THEN
        -- The count is read without a lock. Within `slots` of the limit, every slot row of the
        -- tenant is locked first (in order, after making sure each exists), which waits out the
        -- registrations in flight and keeps out new ones, and the count read again is exact.
        -- A full tenant is answered before the agent is touched. A duplicate is a duplicate even
        -- in a full tenant.
        SELECT coalesce(sum(t.agent_count), 0) INTO n FROM tenants t WHERE t.tenant_id = p_tenant;
        near := n + slots > p_max_agents;
        IF near THEN
            INSERT INTO tenants (tenant_id, slot, agent_count)
            SELECT p_tenant, s, 0 FROM generate_series(0, slots - 1) AS s
            ON CONFLICT (tenant_id, slot) DO NOTHING;
            PERFORM FROM tenants t WHERE t.tenant_id = p_tenant ORDER BY t.slot FOR UPDATE;
            SELECT coalesce(sum(t.agent_count), 0) INTO n
              FROM tenants t WHERE t.tenant_id = p_tenant;
        END IF;
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
                INSERT INTO tenants AS t (tenant_id, slot, agent_count)
                VALUES (p_tenant, registry_slot(p_target), 1)
                ON CONFLICT (tenant_id, slot) DO UPDATE SET agent_count = t.agent_count + 1;
                IF NOT near THEN
                    -- Far from the limit. Each registration in flight holds the lock of its
                    -- own slot until it commits, so at most `slots - 1` others are in flight
                    -- unseen here: if they could take the tenant past its limit, this one is
                    -- undone and, sent again, takes the exact way above.
                    SELECT coalesce(sum(t.agent_count), 0) INTO n
                      FROM tenants t WHERE t.tenant_id = p_tenant;
                    IF n + slots - 1 > p_max_agents THEN
                        RAISE EXCEPTION 'tenant % was filled by concurrent registrations',
                            p_tenant USING ERRCODE = 'serialization_failure';
                    END IF;
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
            -- The agent's own slot, which may not exist yet (an agent counted before 0005
            -- is in slot 0): a slot may go below zero, the tenant's sum does not.
            INSERT INTO tenants AS t (tenant_id, slot, agent_count)
            VALUES (p_tenant, registry_slot(p_target), -1)
            ON CONFLICT (tenant_id, slot) DO UPDATE SET agent_count = t.agent_count - 1;
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
            doc := registry_agent_json(w_agent.agent_id, w_agent.name, w_agent.model_family,
                w_agent.task_types, w_agent.languages, w_agent.specializations,
                w_agent.max_concurrent_tasks, w_agent.active_tasks, w_agent.queued_tasks,
                w_agent.registered_at, w_agent.last_heartbeat_at, w_agent.updated_at,
                w_agent.version, w_agent.revision, w_agent.task_count, w_agent.success_count,
                w_agent.quality_sum, w_agent.latency_ms_sum);
        END IF;
    END IF;
    w_body := doc::text;

    WITH ledger AS (
        INSERT INTO operations (tenant_id, op_id, kind, request_hash, status, reason,
            response_status, response_body)
        VALUES (p_tenant, p_op_id, p_kind, p_request_hash, w_state, w_reason, w_status,
            doc::jsonb))
    INSERT INTO audit_log (tenant_id, actor, action, target, outcome, request_id, op_id, at)
    VALUES (p_tenant, p_actor, p_action, p_target,
        CASE WHEN w_slug IS NULL THEN 'applied' ELSE 'rejected:' || w_slug END,
        p_request_id, p_op_id, coalesce(p_at, now()));
END;
$$;
