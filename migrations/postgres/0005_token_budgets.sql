-- Token budgets (see `spend::budget`). A token's own spend limit is a `spend` row keyed
-- `token:<id>` (limit, period, spent, like a provider ceiling); nothing new is needed for it.
--
-- Child tokens: a token minted by another (`parent_id`, `depth` 1 or 2) whose limit was carved
-- out of its parent's budget. The carve was charged to the parent's `spend` row in the period
-- `carve_period_start`; what the child did not spend goes back once, when it has ended (revoked
-- or expired): `carve_returned_at` says it has (set by whichever instance claims the return).
ALTER TABLE tool_tokens ADD COLUMN parent_id TEXT REFERENCES tool_tokens(id);
ALTER TABLE tool_tokens ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tool_tokens ADD COLUMN carve_micros BIGINT;
ALTER TABLE tool_tokens ADD COLUMN carve_period_start BIGINT;
ALTER TABLE tool_tokens ADD COLUMN carve_returned_at BIGINT;
CREATE INDEX tool_tokens_parent ON tool_tokens(parent_id);
-- The sweeper's question: which carves are still out?
CREATE INDEX tool_tokens_carve_out ON tool_tokens(expires_at)
    WHERE carve_micros IS NOT NULL AND carve_returned_at IS NULL;
