-- Several instances on one database (PostgreSQL) share ceilings through leases; the same tables
-- exist here so both schemas stay one shape. SQLite serves one instance per file, which never
-- takes a lease and writes its holds with an empty instance id.
ALTER TABLE spend_holds ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX spend_holds_by_instance ON spend_holds(instance_id, id);

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
