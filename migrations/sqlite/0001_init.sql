-- 0001: vault canary, accounts, sessions, provider keys, audit log.
-- Times are Unix seconds (UTC). Secrets are never stored in clear: keys and emails as vault blobs,
-- session ids as SHA-256 hashes.

CREATE TABLE vault_canary (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    master_key_id TEXT NOT NULL,
    blob BLOB NOT NULL
) STRICT;

-- Accounts are keyed by HMAC-SHA256(pepper, normalised email); the email itself is a vault blob.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    email_hash BLOB NOT NULL UNIQUE,
    email_blob BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    password_hash TEXT,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX accounts_master_key ON accounts(master_key_id);

CREATE TABLE sessions (
    id_hash BLOB PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    reauth_until INTEGER NOT NULL DEFAULT 0,
    user_agent TEXT NOT NULL DEFAULT '',
    client_addr TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX sessions_account ON sessions(account_id);

CREATE TABLE provider_keys (
    id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    blob BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    masked TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER,
    last_used_at INTEGER,
    UNIQUE (account_id, provider)
) STRICT;
CREATE INDEX provider_keys_master_key ON provider_keys(master_key_id);

-- Append-only, hash-chained per account (chain 0 holds events with no known account).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    chain INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    outcome TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (chain, seq)
) STRICT;
CREATE INDEX audit_log_chain_at ON audit_log(chain, at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
