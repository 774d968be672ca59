-- 0007: what an operator manages from the command line (`keybroker accounts ...`).
--
-- A disabled account cannot sign in, its sessions are ended when it is disabled, and the proxy
-- refuses its tool tokens (the token lookup joins on it; the token cache holds an entry ≤ 1 s).
ALTER TABLE accounts ADD COLUMN disabled_at INTEGER;
-- When a session was last started for the account (password, sign-up confirmation or OAuth).
ALTER TABLE accounts ADD COLUMN last_login_at INTEGER;
-- The first account created on a fresh database is the operator's: a marker shown by
-- `accounts list`. It grants nothing in the HTTP API.
ALTER TABLE accounts ADD COLUMN is_operator INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET is_operator = 1 WHERE id = (SELECT MIN(id) FROM accounts);
UPDATE accounts SET last_login_at = (SELECT MAX(created_at) FROM sessions WHERE account_id = accounts.id);

-- Invites (`keybroker accounts invite EMAIL`) for KEYBROKER_SIGNUP=invite: stored only as the
-- SHA-256 of the `kbi_` code, bound to the peppered hash of one address, redeemed once by a
-- single UPDATE ... WHERE used_at IS NULL, valid 7 days.
CREATE TABLE signup_invites (
    token_hash BLOB PRIMARY KEY,
    email_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
) STRICT;
