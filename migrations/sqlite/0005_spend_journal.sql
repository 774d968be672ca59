-- 0005: where the hold journal (src/spend/journal.rs) and the database meet. `epoch` numbers the
-- runs of the server (bumped by start-up recovery); `committed_seq` is the last spend-writer
-- sequence number committed in this run. A journaled hold above it never reached the database.
CREATE TABLE spend_journal_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    committed_seq INTEGER NOT NULL
) STRICT;

INSERT INTO spend_journal_state (id, epoch, committed_seq) VALUES (1, 0, 0);
