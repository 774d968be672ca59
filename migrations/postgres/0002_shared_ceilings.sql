-- Several instances on one database share ceilings through leases (see `spend::shared`).
-- Reservation ids are counted per instance, so a hold is known by (instance, id).
ALTER TABLE spend_holds ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';
ALTER TABLE spend_holds DROP CONSTRAINT spend_holds_pkey;
ALTER TABLE spend_holds ADD PRIMARY KEY (instance_id, id);

-- Each running instance, with the last time it said it was alive.
CREATE TABLE keybroker_instances (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- The part of a ceiling's budget an instance holds to admit calls against without a round trip.
CREATE TABLE spend_leases (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    amount_micros BIGINT NOT NULL,
    PRIMARY KEY (account_id, provider, instance_id)
);
