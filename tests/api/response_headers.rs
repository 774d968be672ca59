//! What every response carries, over plain HTTP and over HTTPS: the request id (echoed, and in
//! every error body and the access-log line), the security headers, a CSP, HSTS only over HTTPS;
//! and that no query string reaches the logs.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::TestApp;
use crate::tls::{Pki, HSTS};

/// (method, path, status, kind): a JSON route, a page, a static file, a proxy error, an unknown
/// path and a wrong method.
const ROUTES: [(Method, &str, u16, &str); 7] = [
    (Method::GET, "/healthz", 200, "json"),
    (Method::GET, "/api/v1/auth/session", 401, "error"),
    (Method::GET, "/login", 200, "html"),
    (Method::GET, "/static/app.css", 200, "static"),
    (
        Method::POST,
        "/proxy/openai/v1/chat/completions",
        401,
        "error",
    ),
    (Method::GET, "/no/such/route", 404, "error"),
    (Method::DELETE, "/api/v1/keys", 405, "error"),
];

async fn walk(app: &TestApp, client: &reqwest::Client, base: &str, https: bool) {
    let probe = uuid::Uuid::new_v4().simple().to_string();
    for (i, (method, path, status, kind)) in ROUTES.iter().enumerate() {
        let id = format!("walk-{https}-{i}");
        let res = client
            .request(method.clone(), format!("{base}{path}?probe={probe}"))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        let what = format!(
            "{method} {path} over {}",
            if https { "https" } else { "http" }
        );
        assert_eq!(res.status().as_u16(), *status, "{what}");
        let h = res.headers().clone();
        assert_eq!(h["x-request-id"], id.as_str(), "{what}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        assert!(h.contains_key("referrer-policy"), "{what}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
        match h.get("strict-transport-security") {
            Some(v) => assert!(https && v == HSTS, "{what}"),
            None => assert!(!https, "{what}: no HSTS"),
        }
        match *kind {
            "html" => assert!(csp.contains("default-src 'self'"), "{what}"),
            "error" => {
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"]["request_id"], id.as_str(), "{what}");
                assert!(body["error"]["type"].is_string(), "{what}");
                if *status == 405 {
                    assert_eq!(body["error"]["type"], "method_not_allowed");
                    let allow = h["allow"].to_str().unwrap();
                    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
                }
            }
            _ => {}
        }
        // The access-log line (captured as JSON) carries the request id from the request's span
        // and the client; it names the route pattern, never the query.
        let logs = app.logs();
        let line = logs
            .lines()
            .find(|l| l.contains(&format!(r#""request_id":"{id}""#)) && l.contains(r#""status":"#))
            .unwrap_or_else(|| panic!("{what}: no access-log line"));
        assert!(line.contains(r#""client":"127.0.0.1""#), "{line}");
    }
    app.assert_not_logged(&probe);
}

#[tokio::test]
async fn every_response_carries_the_headers_over_plain_http() {
    let app = TestApp::spawn().await;
    walk(&app, &app.client, &app.address, false).await;
}

#[tokio::test]
async fn every_response_carries_the_headers_and_hsts_over_https() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let tls = pki.leaf().write(dir.path());
    let app = TestApp::spawn_with(|s| s.tls = Some(tls)).await;
    let base = format!("https://127.0.0.1:{}", app.port);
    walk(&app, &pki.reqwest_client(), &base, true).await;
}

#[tokio::test]
async fn a_secret_looking_path_or_query_is_never_logged() {
    let app = TestApp::spawn().await;
    let token = format!("kb_{}", uuid::Uuid::new_v4().simple());
    let reset = uuid::Uuid::new_v4().simple().to_string();
    for path in [
        format!("/proxy/openai/v1/models/{token}?key={token}"),
        format!("/reset/confirm?token={reset}"),
        format!("/no/such/{token}"),
    ] {
        let res = app.get(&path, None).send().await.unwrap();
        assert!(res.headers().contains_key("x-request-id"));
    }
    app.assert_not_logged(&token);
    app.assert_not_logged(&reset);
}
