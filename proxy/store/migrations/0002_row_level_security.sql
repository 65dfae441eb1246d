-- Row-level security: a second wall behind the tenant filter of every query.
--
-- Each sidecar connects with the tenants it serves in the startup parameter
-- `registry_proxy.tenants` (a comma-separated list; tenant ids cannot contain commas), so the
-- wall costs no extra round trip per request. A query that forgot its tenant filter still sees
-- only the tenants of the sidecar that sent it. Superusers bypass row-level security, as always
-- in PostgreSQL; run the sidecar as an ordinary role to have the wall.

CREATE OR REPLACE FUNCTION registry_proxy_tenants() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT string_to_array(coalesce(current_setting('registry_proxy.tenants', true), ''), ',')
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'tenants', 'performance_events', 'operations', 'audit_log']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = ANY (registry_proxy_tenants()))',
            t);
    END LOOP;
END;
$$;
