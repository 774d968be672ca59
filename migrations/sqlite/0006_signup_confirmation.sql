-- 0006: sign-up confirmed by mail, and lookalike addresses.
--
-- A sign-up creates its account unconfirmed: no session, no sign-in, until the link mailed to the
-- address is redeemed (or a password reset or an OAuth sign-in proves the mailbox). Every account
-- that exists before this migration could already sign in, so it counts as confirmed.
ALTER TABLE accounts ADD COLUMN confirmed_at INTEGER;
UPDATE accounts SET confirmed_at = created_at;

-- HMAC-SHA256(pepper, UTS #39 skeleton of the normalised email), to find an address that looks
-- like an existing one. Not unique: accounts created before it existed may already look alike.
-- NULL until start-up fills it in from the sealed email (src/accounts/mod.rs, `backfill`).
ALTER TABLE accounts ADD COLUMN email_skeleton_hash BLOB;
CREATE INDEX accounts_email_skeleton ON accounts(email_skeleton_hash);

-- Sign-up confirmation tokens: stored only as SHA-256 hashes, one account each, valid 24 hours,
-- redeemed once by a single UPDATE ... WHERE used_at IS NULL.
CREATE TABLE signup_tokens (
    token_hash BLOB PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
) STRICT;
CREATE INDEX signup_tokens_account ON signup_tokens(account_id);
