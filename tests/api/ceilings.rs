//! Loosening a spend ceiling needs a recent re-auth, as removing a key does: raising its limit,
//! making it start over more often, removing it, or forgiving spend. Tightening needs only the
//! session.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Session, TestApp};
use crate::key_helpers::{error_type, grant_reauth};

async fn put(app: &TestApp, s: &Session, limit: &str, period: &str) -> reqwest::Response {
    app.send(Method::PUT, "/api/v1/ceilings/openai", Some(s))
        .json(&json!({"limit_usd": limit, "period": period}))
        .send()
        .await
        .unwrap()
}

/// The OpenAI ceiling as listed, `Null` without one.
async fn openai_ceiling(app: &TestApp, s: &Session) -> Value {
    let all: Value = app
        .get("/api/v1/ceilings", Some(s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all["ceilings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == "openai")
        .cloned()
        .unwrap_or(Value::Null)
}

/// A fresh account with a $5.00 monthly OpenAI ceiling and no re-auth window.
async fn with_ceiling() -> (TestApp, Session) {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    assert_eq!(put(&app, &s, "5.00", "monthly").await.status(), 200);
    (app, s)
}

#[tokio::test]
async fn a_first_ceiling_and_a_lower_one_need_no_reauth() {
    let (app, s) = with_ceiling().await;
    assert_eq!(put(&app, &s, "2.00", "monthly").await.status(), 200);
    assert_eq!(put(&app, &s, "2.00", "none").await.status(), 200);
    assert_eq!(openai_ceiling(&app, &s).await["limit_usd"], "2.00");
}

#[tokio::test]
async fn raising_a_limit_without_a_recent_reauth_is_refused_and_changes_nothing() {
    let (app, s) = with_ceiling().await;
    let res = put(&app, &s, "50.00", "monthly").await;
    assert_eq!(error_type(res, 403).await, "reauth_required");
    assert_eq!(openai_ceiling(&app, &s).await["limit_usd"], "5.00");
}

#[tokio::test]
async fn a_period_that_starts_over_more_often_counts_as_raising() {
    let (app, s) = with_ceiling().await;
    let res = put(&app, &s, "5.00", "daily").await;
    assert_eq!(error_type(res, 403).await, "reauth_required");
    assert_eq!(openai_ceiling(&app, &s).await["period"], "monthly");
}

#[tokio::test]
async fn raising_a_limit_after_a_reauth_is_allowed() {
    let (app, s) = with_ceiling().await;
    grant_reauth(&app, &s).await;
    assert_eq!(put(&app, &s, "50.00", "daily").await.status(), 200);
    assert_eq!(openai_ceiling(&app, &s).await["limit_usd"], "50.00");
}

#[tokio::test]
async fn removing_a_ceiling_needs_a_recent_reauth() {
    let (app, s) = with_ceiling().await;
    let delete = || {
        app.send(Method::DELETE, "/api/v1/ceilings/openai", Some(&s))
            .send()
    };
    assert_eq!(
        error_type(delete().await.unwrap(), 403).await,
        "reauth_required"
    );
    assert_eq!(openai_ceiling(&app, &s).await["limit_usd"], "5.00");
    grant_reauth(&app, &s).await;
    assert_eq!(delete().await.unwrap().status(), 204);
    assert_eq!(openai_ceiling(&app, &s).await, Value::Null);
}

#[tokio::test]
async fn resetting_spend_needs_a_recent_reauth() {
    let (app, s) = with_ceiling().await;
    let reset = || {
        app.send(Method::POST, "/api/v1/ceilings/openai/reset", Some(&s))
            .send()
    };
    assert_eq!(
        error_type(reset().await.unwrap(), 403).await,
        "reauth_required"
    );
    grant_reauth(&app, &s).await;
    assert_eq!(reset().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_refused_loosening_is_in_the_audit_log_as_denied() {
    let (app, s) = with_ceiling().await;
    assert_eq!(put(&app, &s, "50.00", "monthly").await.status(), 403);
    let audit: Value = app
        .get("/api/v1/audit?action=ceiling.set", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let outcomes: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["denied", "success"], "newest first");
}

/// A settle whose account was deleted meanwhile cannot be written (its account row is gone); it
/// is skipped, and every other account's spend in the same batch is still written. On
/// PostgreSQL the failed statement aborts the whole transaction, so the writer writes the batch
/// again record by record, each in a savepoint.
#[tokio::test]
async fn spend_of_a_deleted_account_does_not_take_another_accounts_spend_with_it() {
    let app = TestApp::spawn().await;
    let (first, second) = (app.signed_up().await, app.signed_up().await);
    let ids: Vec<i64> = app
        .sql(|c| c.query_all("SELECT id FROM accounts ORDER BY id", (), |r| r.get(0)))
        .await;
    let _ = (first, second);
    let (gone, kept) = (ids[0], ids[1]);
    let ledger = &app.state.proxy.ledger;
    let amount = keybroker::money::Money::from_micros(250_000);
    let (doomed, fine) = (
        ledger.reserve(gone, "openai", amount).unwrap(),
        ledger.reserve(kept, "openai", amount).unwrap(),
    );
    app.state.proxy.writer.flush().await;
    app.sql(move |c| c.execute("DELETE FROM accounts WHERE id = ?1", [gone]))
        .await;
    // Both settle inside one batch window.
    doomed.settle(amount);
    fine.settle(amount);
    app.state.proxy.writer.flush().await;
    let spent: Vec<(i64, i64)> = app
        .sql(|c| {
            c.query_all(
                "SELECT account_id, spent_micros FROM spend WHERE provider = 'openai'",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await;
    assert_eq!(spent, vec![(kept, 250_000)], "{}", app.logs());
}
