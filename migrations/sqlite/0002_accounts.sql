-- 0002: password reset tokens, OAuth identities and pending OAuth sign-ins.
-- Tokens and states are stored only as SHA-256 hashes; nothing here can be replayed from a copy
-- of the database.

-- One outstanding token per account (issuing a new one deletes the older ones). Redeemed by a
-- single UPDATE ... WHERE used_at IS NULL, so two racing redemptions cannot both succeed.
CREATE TABLE password_reset_tokens (
    token_hash BLOB PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
) STRICT;
CREATE INDEX password_reset_tokens_account ON password_reset_tokens(account_id);

-- A provider's user (its stable subject id, never the email) linked to an account.
CREATE TABLE oauth_identities (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_login_at INTEGER NOT NULL,
    PRIMARY KEY (provider, subject),
    UNIQUE (account_id, provider)
) STRICT;

-- An OAuth sign-in between /start and /callback. Single use: the callback deletes the row it
-- redeems. Bound to the browser by the hash of its pre-login cookie; the PKCE verifier is derived
-- from that cookie and the state with the session secret, so it is not stored at all.
CREATE TABLE oauth_states (
    state_hash BLOB PRIMARY KEY,
    provider TEXT NOT NULL,
    prelogin_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX oauth_states_expiry ON oauth_states(expires_at);
