-- Outgoing mail waiting to be sent (see `mail`): a message survives a restart, and any instance
-- may send it. The recipient and the body (a reset link, a sign-up token) are vault blobs bound
-- to the row's id; kind and subject are fixed texts. A worker claims a row (`claimed_by`,
-- `claimed_until`) before sending it and deletes it once sent; a failed attempt moves
-- `next_attempt_at` on.
CREATE TABLE mail_queue (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    to_blob BYTEA NOT NULL,
    to_master_key_id TEXT NOT NULL,
    body_blob BYTEA NOT NULL,
    body_master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_until BIGINT
);
CREATE INDEX mail_queue_due ON mail_queue(next_attempt_at);
