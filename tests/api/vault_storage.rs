//! What reaches the database file: no plaintext key, no raw email; ciphertexts bound to rows.
//! On PostgreSQL, what reaches the database: its whole `pg_dump` is scanned instead of the files.

use keybroker::keys::store::{self, StoreError};
use keybroker::vault::VaultError;

use crate::helpers::{contains, on_postgres, read_or_empty, unique_email, TestApp, PASSWORD};

async fn account_id(app: &TestApp, nth_newest: i64) -> i64 {
    app.sql(move |conn| {
        conn.query_row(
            "SELECT id FROM accounts ORDER BY id DESC LIMIT 1 OFFSET ?1",
            [nth_newest],
            |r| r.get(0),
        )
    })
    .await
}

async fn store_key(app: &TestApp, account_id: i64, provider: &'static str, plaintext: String) {
    let vault = app.state.vault.clone();
    app.state
        .db
        .write(move |conn| {
            let id = store::new_key_id();
            let key = store::NewKey {
                id: &id,
                account_id,
                provider,
                label: "test",
                masked: "…",
                fingerprint: "fp",
                now: 0,
            };
            store::insert(conn, &vault, &key, plaintext.as_bytes())
        })
        .await
        .unwrap();
}

/// Every byte the store holds: the SQLite database, WAL and shm files, or on PostgreSQL the
/// database's whole `pg_dump`.
fn db_files(app: &TestApp) -> Vec<u8> {
    if on_postgres() {
        return app.pg_dump().into_bytes();
    }
    let db = app.db_path();
    let mut all = read_or_empty(&db);
    for suffix in ["-wal", "-shm"] {
        all.extend(read_or_empty(
            &db.with_file_name(format!("keybroker.db{suffix}")),
        ));
    }
    all
}

/// Whether `stored` (from [`db_files`]) holds `needle`: as is, or on PostgreSQL also as the hex
/// `pg_dump` writes a bytes column in.
fn holds(stored: &[u8], needle: &str) -> bool {
    contains(stored, needle.as_bytes())
        || (on_postgres() && contains(stored, hex::encode(needle).as_bytes()))
}

#[tokio::test]
async fn stored_keys_leave_no_plaintext_in_the_db_wal_or_shm_files() {
    let app = TestApp::spawn().await;
    let mut planted = Vec::new();
    for (i, provider) in ["openai", "anthropic", "google", "stripe", "resend"]
        .into_iter()
        .enumerate()
    {
        app.signed_up().await;
        let account = account_id(&app, 0).await;
        let key = format!("plantedkey-{i}-{}", uuid::Uuid::new_v4().simple());
        store_key(&app, account, provider, key.clone()).await;
        planted.push((account, provider, key));
    }
    let bytes = db_files(&app);
    assert!(bytes.len() > 4096, "the scan read the database");
    for (account, provider, key) in &planted {
        assert!(
            !holds(&bytes, key),
            "plaintext key found in the database files"
        );
        // ... and the key is really there, encrypted.
        let (vault, account, provider) = (app.state.vault.clone(), *account, *provider);
        let (_, opened) = app
            .sql(move |conn| Ok(store::open(conn, &vault, account, provider)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(opened.expose(), key.as_bytes());
    }
}

#[tokio::test]
async fn email_case_and_whitespace_variants_map_to_one_account_and_the_raw_email_is_not_stored() {
    let app = TestApp::spawn().await;
    let local = format!("Mixed.Case-{}", uuid::Uuid::new_v4().simple());
    let typed = format!("  {local}@Example.COM \t");
    app.signup(&typed, PASSWORD).await;

    let normalised = format!("{}@example.com", local.to_lowercase());
    assert_eq!(app.login(&normalised, PASSWORD).await.status(), 200);
    let again = app
        .post_json(
            "/api/v1/auth/signup",
            None,
            &serde_json::json!({"email": normalised.to_uppercase(), "password": PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    // The same answer as any sign-up; no second account (the owner is told by mail).
    assert_eq!(again.status(), 202);
    assert_eq!(app.login(&normalised, PASSWORD).await.status(), 200);

    let bytes = db_files(&app);
    for form in [&normalised, &local, &local.to_lowercase()] {
        assert!(
            !holds(&bytes, form),
            "raw email found in the database files"
        );
    }
}

#[tokio::test]
async fn a_ciphertext_copied_onto_another_account_does_not_decrypt() {
    let app = TestApp::spawn().await;
    app.signup(&unique_email(), PASSWORD).await;
    let a = account_id(&app, 0).await;
    app.signup(&unique_email(), PASSWORD).await;
    let b = account_id(&app, 0).await;
    store_key(&app, a, "openai", "sk-account-a-secret-000000000000".into()).await;
    store_key(&app, b, "openai", "sk-account-b-secret-111111111111".into()).await;

    let vault = app.state.vault.clone();
    let opened = app
        .sql(move |conn| {
            conn.execute(
                "UPDATE provider_keys SET blob = (SELECT blob FROM provider_keys WHERE account_id = ?1) WHERE account_id = ?2",
                [a, b],
            )?;
            Ok(store::open(conn, &vault, b, "openai").map(|found| found.is_some()))
        })
        .await;
    let err = opened.unwrap_err();
    assert!(
        matches!(err, StoreError::Vault(VaultError::Unauthentic)),
        "{err:?}"
    );
}
