use std::time::Duration;

use super::*;

fn thread_and_answer(conn: &Conn<'_>) -> Result<(std::thread::ThreadId, i64)> {
    let n = conn.query_row("SELECT 41 + 1", (), |r| r.get(0))?;
    Ok((std::thread::current().id(), n))
}

#[tokio::test]
async fn an_inline_read_runs_on_the_caller_when_a_reader_is_free_else_off_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    let here = std::thread::current().id();
    let (ran_on, n) = db.read_inline(thread_and_answer).await.unwrap();
    assert_eq!((ran_on, n), (here, 42));

    // Every reader busy (held here): the read waits on a blocking thread, not on this one.
    let Backend::Sqlite(s) = &db.backend else {
        unreachable!()
    };
    let held = s.hold_every_reader();
    let pending = tokio::spawn({
        let db = db.clone();
        async move { db.read_inline(thread_and_answer).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished());
    drop(held);
    let (ran_on, n) = pending.await.unwrap().unwrap();
    assert_eq!(n, 42);
    assert_ne!(ran_on, here);
}

#[test]
fn a_failed_write_closure_rolls_its_transaction_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    db.write_blocking(|c| c.execute_batch("CREATE TABLE t (x INTEGER)"))
        .unwrap();
    let failed: Result<()> = db.write_blocking(|c| {
        c.execute("INSERT INTO t (x) VALUES (?1)", [1])?;
        Err(DbError::NoRows)
    });
    assert!(failed.is_err());
    let n: i64 = db
        .read_blocking(|c| c.query_row("SELECT COUNT(*) FROM t", (), |r| r.get(0)))
        .unwrap();
    assert_eq!(n, 0);
}
