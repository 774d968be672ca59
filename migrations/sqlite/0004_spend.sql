-- 0004: spend ceilings and settled spend per (account, provider), holds in flight, and usage.
-- Money is integer micro-dollars.

-- One row per (account, provider) that has a ceiling or has spent anything. `spent_micros` is the
-- settled spend of the period starting at `period_start`.
CREATE TABLE spend (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    limit_micros INTEGER,
    period TEXT NOT NULL DEFAULT 'none' CHECK (period IN ('none', 'daily', 'monthly')),
    period_start INTEGER NOT NULL,
    spent_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, provider)
) STRICT;

-- Holds for calls in flight. A row left here by a crash is charged in full at the next start.
CREATE TABLE spend_holds (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL,
    provider TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    period_start INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- Usage per account, provider and hour (Unix seconds of the hour's start).
CREATE TABLE usage_hourly (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    hour INTEGER NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    spend_micros INTEGER NOT NULL DEFAULT 0,
    fallback_priced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, provider, hour)
) STRICT;

-- The last calls of each account, for the dashboard (trimmed by the writer).
CREATE TABLE recent_calls (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    at INTEGER NOT NULL,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    request_id TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX recent_calls_account ON recent_calls(account_id, id);
