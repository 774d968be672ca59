-- 0003: key rotation generations, tool tokens and their provider scopes, audit pagination index.
-- Times are Unix seconds (UTC). Tool tokens are stored only as the SHA-256 of the token string.

-- Bumped on every rotation, so a cache of decrypted keys (the proxy's) can tell a row changed
-- without comparing blobs. A deleted and re-added key gets a new id, so (id, generation) is unique.
ALTER TABLE provider_keys ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;

CREATE TABLE tool_tokens (
    id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    -- Revoked rows are kept so audit entries naming `token:<id>` still resolve to a name.
    revoked_at INTEGER,
    last_used_at INTEGER
) STRICT;
CREATE INDEX tool_tokens_account ON tool_tokens(account_id);

-- The providers a token may use; no rows means every provider.
CREATE TABLE tool_token_providers (
    token_id TEXT NOT NULL REFERENCES tool_tokens(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    PRIMARY KEY (token_id, provider)
) STRICT, WITHOUT ROWID;

-- The audit API pages one account's chain newest first by id.
CREATE INDEX audit_log_chain_id ON audit_log(chain, id);
