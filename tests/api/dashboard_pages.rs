//! The dashboard pages over plain HTTP: who may see them, the headers they carry, and that what
//! users typed is rendered as text.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;
use crate::key_helpers::openai_key;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const PAGES: &[&str] = &[
    "/dashboard",
    "/dashboard/settings/keys",
    "/dashboard/settings/tokens",
    "/dashboard/settings/sessions",
    "/dashboard/audit",
];

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn dashboard_pages_send_signed_out_visitors_to_login() {
    let app = TestApp::spawn().await;
    for path in PAGES {
        let res = app.get(path, None).send().await.unwrap();
        assert_eq!(res.status(), 303, "{path}");
        assert_eq!(header(&res, "location"), "/login", "{path}");
    }
}

#[tokio::test]
async fn signed_in_pages_carry_the_strict_headers_and_are_not_stored() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for path in PAGES {
        let res = app.get(path, Some(&s)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&res, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&res, "referrer-policy"), "strict-origin", "{path}");
        assert_eq!(header(&res, "cache-control"), "no-store", "{path}");
        let body = res.text().await.unwrap();
        assert!(
            body.contains(&format!(r#"<meta name="csrf-token" content="{}">"#, s.csrf)),
            "{path} carries the CSRF token"
        );
        assert!(!body.contains("<script>"), "{path} has no inline script");
        assert!(!body.contains("style="), "{path} has no inline style");
    }
}

#[tokio::test]
async fn reset_pages_send_no_referrer_and_never_render_the_token() {
    let app = TestApp::spawn().await;
    let token = keybroker::accounts::reset::ResetToken::generate();
    let link = format!("/reset/confirm?token={}", token.as_str());
    for path in ["/reset", link.as_str()] {
        let res = app.get(path, None).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header(&res, "cache-control"), "no-store", "{path}");
        assert_eq!(header(&res, "content-security-policy"), CSP, "{path}");
        assert!(
            !res.text().await.unwrap().contains(token.as_str()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn login_and_signup_pages_are_public() {
    let app = TestApp::spawn().await;
    for (path, action) in [
        ("/login", "/api/v1/auth/login"),
        ("/signup", "/api/v1/auth/signup"),
    ] {
        let res = app.get(path, None).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-security-policy"), CSP);
        assert!(res.text().await.unwrap().contains(action), "{path}");
    }
}

#[tokio::test]
async fn the_stylesheet_and_script_are_served_with_their_types() {
    let app = TestApp::spawn().await;
    for (path, ty) in [
        ("/static/app.css", "text/css; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/favicon.svg", "image/svg+xml"),
    ] {
        let res = app.get(path, None).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), ty);
        assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    }
}

#[tokio::test]
async fn a_key_label_with_markup_is_rendered_as_text() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .send(Method::POST, "/api/v1/keys", Some(&s))
        .json(&json!({"provider": "openai", "key": openai_key(), "label": "<script>alert(1)</script>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body = app
        .get("/dashboard/settings/keys", Some(&s))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || body.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    assert!(!body.contains("<script>alert(1)"));
}

#[tokio::test]
async fn the_keys_page_shows_masks_never_the_key() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = openai_key();
    crate::key_helpers::add_key(&app, &s, "openai", &key).await;
    let body = app
        .get("/dashboard/settings/keys", Some(&s))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(&key));
    assert!(body.contains("sk-proj-"));
}
