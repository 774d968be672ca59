-- Several instances on one database (PostgreSQL) share ceilings through leases; the same tables
-- exist here so both schemas stay one shape. SQLite serves one instance per file, which never
-- takes a lease and writes its holds with an empty instance id.
-- A hold is known by (instance, id), as on PostgreSQL: the table is rebuilt with that key.
CREATE TABLE spend_holds_new (
    instance_id TEXT NOT NULL DEFAULT '',
    id INTEGER NOT NULL,
    account_id INTEGER NOT NULL,
    provider TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    period_start INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (instance_id, id)
) STRICT;
INSERT INTO spend_holds_new (instance_id, id, account_id, provider, amount_micros, period_start, created_at)
    SELECT '', id, account_id, provider, amount_micros, period_start, created_at FROM spend_holds;
DROP TABLE spend_holds;
ALTER TABLE spend_holds_new RENAME TO spend_holds;

-- Each running instance, with the last time it said it was alive.
CREATE TABLE keybroker_instances (
    id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL
);

-- The part of a ceiling's budget an instance holds to admit calls against without a round trip.
CREATE TABLE spend_leases (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    amount_micros INTEGER NOT NULL,
    PRIMARY KEY (account_id, provider, instance_id)
);
