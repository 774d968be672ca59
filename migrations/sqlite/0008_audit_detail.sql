-- What an audit entry changed, in words keybroker writes itself (a ceiling's old and new limit
-- and period). Empty for every entry before this and for entries with nothing to add; the entry
-- hash covers it only when it is not empty, so older chains verify unchanged.
ALTER TABLE audit_log ADD COLUMN detail TEXT NOT NULL DEFAULT '';
