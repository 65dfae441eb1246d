-- A per-agent revision for ETag and If-Match.
--
-- `version` draws from one sequence on every write (heartbeat, load, performance too): it is the
-- replica's change watermark, and as an ETag it made a PATCH with If-Match lose to the agent's own
-- heartbeats. `revision` counts only changes of what a PATCH can change (name, model_family,
-- capabilities, max_concurrent_tasks): 1 at the first registration, +1 for each patch that
-- changes one of them, +1 for a re-registration after an unregister (so an ETag taken before the
-- unregister never matches the new registration). Each step is exactly 1, so a sidecar that knows
-- a row's revision can compute the revision its journaled patches will give it.
--
-- Rows that exist already start at 1. A constant default adds the column without rewriting the
-- table.
ALTER TABLE agents ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT 1;

COMMENT ON COLUMN agents.revision IS
    'ETag of the agent: 1 at registration, +1 per change of a field PATCH can change';
