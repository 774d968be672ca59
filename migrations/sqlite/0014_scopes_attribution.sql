-- Method and path scopes of tool tokens (`tokens::Scope`), and usage attributed to the token and
-- the agent label (`X-Keybroker-Agent`) that made each call.
--
-- A scope column is NULL when the token is not restricted that way; otherwise it holds the
-- listed methods (upper case) or path patterns, one per line (neither can contain a newline).
ALTER TABLE tool_tokens ADD COLUMN methods TEXT;
ALTER TABLE tool_tokens ADD COLUMN paths TEXT;

-- The call's agent label ('' when it carried none).
ALTER TABLE recent_calls ADD COLUMN agent TEXT NOT NULL DEFAULT '';

-- `usage_hourly` again, per token and agent label: written by the spend writer's per-batch fold,
-- one upsert per group per batch. `token_id` is '' for a call that had no token.
CREATE TABLE usage_hourly_by_token (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    hour INTEGER NOT NULL,
    provider TEXT NOT NULL,
    token_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    spend_micros INTEGER NOT NULL DEFAULT 0,
    fallback_priced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, hour, provider, token_id, agent)
) STRICT;
