use crate::helpers::TestApp;

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let res = app.get("/healthz", None).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_reports_ready_when_database_and_canary_are_fine() {
    let app = TestApp::spawn().await;
    let res = app.get("/readyz", None).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn unknown_route_gets_a_json_404_carrying_the_request_id() {
    let app = TestApp::spawn().await;
    let res = app
        .get("/nope", None)
        .header("X-Request-ID", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-request-id"], "req-42");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found");
    assert_eq!(body["error"]["request_id"], "req-42");
}

#[tokio::test]
async fn an_insane_request_id_is_replaced() {
    let app = TestApp::spawn().await;
    let res = app
        .get("/healthz", None)
        .header("X-Request-ID", "a b c")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "a b c");
    assert_eq!(id.len(), 36);
}

#[tokio::test]
async fn responses_carry_basic_security_headers() {
    let app = TestApp::spawn().await;
    let res = app.get("/healthz", None).send().await.unwrap();
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
}
