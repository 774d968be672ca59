//! The mail queue lives in the database: a mail that could not be sent stays queued, sealed, and
//! a later start on the same store (a restart, or another instance) sends it; instances sharing a
//! store send each mail once. Runs on either backend (`KEYBROKER_TEST_BACKEND=postgres`).

use std::time::Duration;

use keybroker::clock::Clock as _;
use keybroker::config::Settings;
use keybroker::db::{Optional as _, PgSettings};
use keybroker::mail::{self, Mail};
use secrecy::SecretString;

use crate::helpers::{contains, on_postgres, read_or_empty, unique_email, TestApp, PASSWORD};
use crate::mail_support::SmtpSink;

/// An SMTP URL nobody listens on: every send is refused at once.
fn closed_smtp_url() -> SecretString {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    SecretString::from(format!("smtp://127.0.0.1:{port}"))
}

/// Another server on `first`'s store (its data directory or database, its master key), as a
/// restart or a second instance would be.
async fn another_server_on(first: &TestApp, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = first.data_dir.path().join("data");
    let key = first.master_key_b64.clone();
    let url = first.database_url.clone();
    TestApp::spawn_with(move |s| {
        s.data_dir = data_dir;
        s.secrets.master_key = Some(SecretString::from(key));
        if let Some(url) = url {
            s.database = Some(PgSettings::parse(SecretString::from(url)).unwrap());
        }
        configure(s);
    })
    .await
}

/// `(attempts, next_attempt_at, claimed_by)` of every queued row.
async fn queued(app: &TestApp) -> Vec<(i64, i64, Option<String>)> {
    app.sql(|c| {
        c.query_all(
            "SELECT attempts, next_attempt_at, claimed_by FROM mail_queue ORDER BY created_at",
            (),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    })
    .await
}

/// Polls the queue every 20 ms for up to 10 s until `done` says yes.
async fn wait_for_queue(
    app: &TestApp,
    done: impl Fn(&[(i64, i64, Option<String>)]) -> bool,
) -> Vec<(i64, i64, Option<String>)> {
    for _ in 0..500 {
        let rows = queued(app).await;
        if done(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the mail queue never got there: {:?}", queued(app).await);
}

/// Everything the store holds at rest: the SQLite files, or PostgreSQL's `pg_dump`.
fn at_rest(app: &TestApp) -> Vec<u8> {
    if on_postgres() {
        return app.pg_dump().into_bytes();
    }
    let db = app.db_path();
    ["", "-wal", "-shm"]
        .iter()
        .flat_map(|suffix| {
            read_or_empty(&std::path::PathBuf::from(format!(
                "{}{suffix}",
                db.display()
            )))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_that_could_not_be_sent_stays_queued_sealed_and_a_later_start_sends_it() {
    let first = TestApp::spawn_with(|s| s.mail.smtp_url = Some(closed_smtp_url())).await;
    let email = unique_email();
    assert_eq!(first.signup_request(&email, PASSWORD).await.status(), 202);

    // The worker tried at once, was refused, and handed the row back for 30 s later.
    let tried = first.clock.unix();
    let rows = wait_for_queue(&first, |rows| {
        rows.first()
            .is_some_and(|(attempts, _, by)| *attempts == 1 && by.is_none())
    })
    .await;
    assert_eq!(rows, [(1, tried + 30, None)]);
    assert!(first
        .logs()
        .contains("mail could not be sent; it stays queued"));

    // At rest the row holds neither the address nor the body (whose code confirms the account).
    let stored = at_rest(&first);
    for plain in [email.as_str(), "hopefully you", "kbs_"] {
        assert!(
            !contains(&stored, plain.as_bytes()),
            "{plain:?} is in the store in plaintext"
        );
    }

    // The next start, with a mail server that answers: once the retry is due, it is sent.
    let sink = SmtpSink::start().await;
    let url = SecretString::from(sink.url());
    let second = another_server_on(&first, move |s| s.mail.smtp_url = Some(url)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages().is_empty(), "sent before the retry was due");
    second.clock.advance(time::Duration::seconds(31));
    let sent = sink.wait_for(1).await;
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].to_lowercase().contains(&format!("to: {email}")),
        "{}",
        sent[0]
    );
    assert!(
        sent[0].contains("Subject: Confirm your keybroker account"),
        "{}",
        sent[0]
    );
    wait_for_queue(&second, <[_]>::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_store_send_each_queued_mail_once() {
    let sink = SmtpSink::start().await;
    let (a, b) = (
        SecretString::from(sink.url()),
        SecretString::from(sink.url()),
    );
    let first = TestApp::spawn_with(move |s| s.mail.smtp_url = Some(a)).await;
    let second = another_server_on(&first, move |s| s.mail.smtp_url = Some(b)).await;

    let recipients: Vec<String> = (0..20).map(|_| unique_email()).collect();
    let (vault, now, to) = (
        first.state.vault.clone(),
        first.clock.unix(),
        recipients.clone(),
    );
    first
        .sql(move |conn| {
            for to in to {
                let mail = Mail {
                    kind: "test",
                    to,
                    subject: "queued",
                    body: "one of twenty".to_owned(),
                };
                mail::insert(conn, &vault, &mail, now).unwrap();
            }
            Ok(())
        })
        .await;
    first.state.mail.wake();
    second.state.mail.wake();

    sink.wait_for(recipients.len()).await;
    wait_for_queue(&first, <[_]>::is_empty).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = sink.messages();
    assert_eq!(sent.len(), recipients.len());
    for to in &recipients {
        let copies = sent
            .iter()
            .filter(|m| m.to_lowercase().contains(&format!("to: {to}")))
            .count();
        assert_eq!(copies, 1, "{to}");
    }
}

#[tokio::test]
async fn a_mail_that_does_not_open_is_dropped_without_being_sent() {
    let sink = SmtpSink::start().await;
    let url = SecretString::from(sink.url());
    let app = TestApp::spawn_with(move |s| s.mail.smtp_url = Some(url)).await;
    let (vault, now) = (app.state.vault.clone(), app.clock.unix());
    // Two rows, the second given the first's sealed recipient: it must not open there.
    app.sql(move |conn| {
        for (to, at) in [(unique_email(), now + 60), (unique_email(), now + 61)] {
            let mail = Mail {
                kind: "test",
                to,
                subject: "moved",
                body: "a body".to_owned(),
            };
            mail::insert(conn, &vault, &mail, at).unwrap();
        }
        conn.execute(
            "UPDATE mail_queue SET to_blob = (SELECT to_blob FROM mail_queue WHERE next_attempt_at = ?1)
             WHERE next_attempt_at = ?2",
            keybroker::params![now + 60, now + 61],
        )?;
        conn.execute("DELETE FROM mail_queue WHERE next_attempt_at = ?1", keybroker::params![now + 60])
    })
    .await;
    app.clock.advance(time::Duration::seconds(120));
    app.state.mail.wake();
    wait_for_queue(&app, <[_]>::is_empty).await;
    assert!(app
        .logs()
        .contains("a queued mail does not open; it is dropped"));
    assert!(sink.messages().is_empty());
    let gone: Option<i64> = app
        .sql(|c| {
            c.query_row("SELECT attempts FROM mail_queue", (), |r| r.get(0))
                .optional()
        })
        .await;
    assert_eq!(gone, None);
}

#[tokio::test]
async fn a_mail_the_server_refuses_for_good_is_given_up_at_once_without_logging_its_reply() {
    let sink = SmtpSink::refusing().await;
    let url = SecretString::from(sink.url());
    let app = TestApp::spawn_with(move |s| s.mail.smtp_url = Some(url)).await;
    let email = unique_email();
    assert_eq!(app.signup_request(&email, PASSWORD).await.status(), 202);
    wait_for_queue(&app, <[_]>::is_empty).await;
    assert_eq!(sink.refused().len(), 1);
    assert!(sink.refused()[0].contains(&email));
    let logs = app.logs();
    assert!(
        logs.contains("the mail server refused the message (550)"),
        "{logs}"
    );
    // The server's reply quoted the address; only its code reached the log.
    app.assert_not_logged(&email);
}
