-- Which tool token made each recent call, and how long it took (from the call's arrival to its
-- settlement: the whole answer, streamed or not), for the Spend page.
ALTER TABLE recent_calls ADD COLUMN token_id TEXT NOT NULL DEFAULT '';
ALTER TABLE recent_calls ADD COLUMN latency_ms INTEGER NOT NULL DEFAULT 0;
