-- Webhooks (see `webhooks`) and spend alerts (see `alerts`).
--
-- One webhook per account: its URL and its signing secret, a vault blob bound to the account
-- (`vault_store::webhook_binding`), never returned once set.
CREATE TABLE webhooks (
    account_id BIGINT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    secret_blob BYTEA NOT NULL,
    secret_master_key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Events to deliver, and the last ones delivered or given up (their owner sees them). The body is
-- the exact JSON that is signed and sent: account-safe fields only, never a key, email or secret.
-- A worker claims a due row (`claimed_by`, `claimed_until`) before sending it; a failed attempt
-- moves `next_attempt_at` on. Only the status code and an error class are kept, never a response.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_until BIGINT,
    last_attempt_at BIGINT,
    last_status_code BIGINT,
    last_error TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_account ON webhook_deliveries(account_id, created_at);

-- Alert thresholds of a ceiling: a JSON array of whole percents (`[50, 80, 100]`), NULL for none.
-- `alerted_percent` is the highest threshold already alerted in the period that starts at
-- `alerted_period_start`; a later period (or a reset, which sets it to 0) alerts again.
ALTER TABLE spend ADD COLUMN alert_percents TEXT;
ALTER TABLE spend ADD COLUMN alerted_percent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE spend ADD COLUMN alerted_period_start BIGINT;
