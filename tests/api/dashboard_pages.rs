//! The dashboard pages over plain HTTP: who may see them, the headers they carry, and that what
//! users typed is rendered as text.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;
use crate::key_helpers::openai_key;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const PAGES: &[&str] = &[
    "/dashboard",
    "/dashboard/spend",
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
async fn reset_pages_send_no_referrer_and_neither_render_nor_log_the_token() {
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
    app.assert_not_logged(&token.as_str()["kbr_".len()..]);
}

#[tokio::test]
async fn login_and_signup_pages_are_public() {
    let app = TestApp::spawn().await;
    for (path, action) in [
        ("/login", "/api/v1/auth/login"),
        ("/signup", "/api/v1/auth/signup"),
        ("/signup/confirm", "/api/v1/auth/signup/confirm"),
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

async fn page_text(app: &TestApp, s: &crate::helpers::Session, path: &str) -> String {
    let res = app.get(path, Some(s)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.text().await.unwrap()
}

#[tokio::test]
async fn another_devices_user_agent_is_rendered_as_text_on_the_sessions_page() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"email": s.email, "password": crate::helpers::PASSWORD}),
        )
        .header("User-Agent", "<img src=x onerror=alert(1)>")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = page_text(&app, &s, "/dashboard/settings/sessions").await;
    assert!(!body.contains("<img src=x"));
    assert!(body.contains("&#60;img src=x onerror=alert(1)&#62;"));
}

#[tokio::test]
async fn a_token_name_with_markup_is_rendered_as_text() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    crate::key_helpers::create_token(&app, &s, json!({"name": "<b>bold</b>"})).await;
    let body = page_text(&app, &s, "/dashboard/settings/tokens").await;
    assert!(!body.contains("<b>bold</b>"));
    assert!(body.contains("&#60;b&#62;bold&#60;/b&#62;"));
}

#[tokio::test]
async fn the_audit_page_filters_by_action_and_links_a_matching_export() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    crate::key_helpers::add_key(&app, &s, "openai", &openai_key()).await;
    let body = page_text(&app, &s, "/dashboard/audit?action=key.add").await;
    assert_eq!(body.matches("<td>key.add</td>").count(), 1);
    assert!(!body.contains("<td>signup</td>"));
    assert!(body.contains(r#"href="/api/v1/audit?format=csv&#38;action=key.add""#));
    let all = page_text(&app, &s, "/dashboard/audit").await;
    assert!(all.contains("<td>signup</td>"));
}

#[tokio::test]
async fn the_audit_page_explains_a_bad_time_filter() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let body = page_text(&app, &s, "/dashboard/audit?since=yesterday").await;
    assert!(body.contains("Times are RFC 3339"));
}

#[tokio::test]
async fn the_audit_page_shows_100_entries_and_links_the_older_ones() {
    use keybroker::audit::{self, Actor, Event, Outcome};
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let account = crate::key_helpers::account_id(&app, &s).await;
    app.state
        .db
        .write(move |conn| -> Result<(), keybroker::db::DbError> {
            for i in 0..120 {
                audit::append(
                    conn,
                    &Event {
                        account_id: Some(account),
                        actor: Actor::User,
                        action: "test.entry",
                        resource: &format!("r{i}"),
                        request_id: "",
                        client_addr: "",
                        outcome: Outcome::Success,
                        at: 1_700_000_000 + i,
                    },
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let first = page_text(&app, &s, "/dashboard/audit?action=test.entry").await;
    assert_eq!(first.matches("<td>test.entry</td>").count(), 100);
    assert!(first.contains("<td>r119</td>") && first.contains("<td>r20</td>"));
    let href = first
        .split(r#"<a href="/dashboard/audit?"#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an older-entries link")
        .replace("&#38;", "&");
    let older = page_text(&app, &s, &format!("/dashboard/audit?{href}")).await;
    assert_eq!(older.matches("<td>test.entry</td>").count(), 20);
    assert!(older.contains("<td>r19</td>") && older.contains("<td>r0</td>"));
    assert!(!older.contains("Older entries"));
}

#[tokio::test]
async fn the_login_page_offers_only_the_configured_oauth_providers() {
    let app = TestApp::spawn_with(|s| {
        s.public_url = Some("http://keybroker.test".to_owned());
        s.oauth.github = Some(keybroker::accounts::oauth::OAuthClientSettings {
            client_id: "client".to_owned(),
            client_secret: secrecy::SecretString::from("secret".to_owned()),
            auth_url: "http://127.0.0.1:9/authorize".to_owned(),
            token_url: "http://127.0.0.1:9/token".to_owned(),
            userinfo_url: "http://127.0.0.1:9/user".to_owned(),
            emails_url: None,
        });
    })
    .await;
    let body = app
        .get("/login", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains(r#"href="/auth/oauth/github/start""#));
    assert!(!body.contains("/auth/oauth/google/start"));
    let plain = TestApp::spawn().await;
    let body = plain
        .get("/login", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains("/auth/oauth/"));
}

#[tokio::test]
async fn a_signed_in_user_is_sent_from_login_and_signup_to_the_dashboard() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for path in ["/login", "/signup"] {
        let res = app.get(path, Some(&s)).send().await.unwrap();
        assert_eq!(res.status(), 303, "{path}");
        assert_eq!(header(&res, "location"), "/dashboard", "{path}");
    }
}

/// Forms are sent by app.js; should it not run, a form must not fall back to a GET that puts a
/// password or key into the URL.
#[tokio::test]
async fn every_form_that_carries_a_secret_is_a_post() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    crate::key_helpers::add_key(&app, &s, "openai", &openai_key()).await;
    let mut forms = 0;
    for path in PAGES.iter().chain(&[
        "/login",
        "/signup",
        "/signup/confirm",
        "/reset",
        "/reset/confirm",
    ]) {
        let session = path.starts_with("/dashboard").then_some(&s);
        let body = app
            .get(path, session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for form in body.split("<form").skip(1) {
            let tag = form.split('>').next().unwrap();
            forms += 1;
            assert!(
                tag.contains(r#"method="post""#) || tag.contains(r#"action="/dashboard/audit""#),
                "{path}: <form{tag}>"
            );
        }
    }
    assert!(forms >= 10, "{forms} forms seen");
}

/// A moment with an unambiguous rendering: 2023-11-14 22:13:20 UTC.
const MOMENT: i64 = 1_700_000_000;

#[tokio::test]
async fn times_are_shown_one_way_on_every_page() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    crate::key_helpers::add_key(&app, &s, "openai", &openai_key()).await;
    crate::key_helpers::create_token(&app, &s, json!({"name": "used"})).await;
    app.sql(|conn| {
        conn.execute("UPDATE provider_keys SET last_used_at = ?1", [MOMENT])?;
        conn.execute("UPDATE tool_tokens SET last_used_at = ?1", [MOMENT])
    })
    .await;
    for path in ["/dashboard/settings/keys", "/dashboard/settings/tokens"] {
        let body = page_text(&app, &s, path).await;
        assert!(body.contains("2023-11-14 22:13:20Z"), "{path}");
        assert!(!body.contains("2023-11-14T22:13:20Z"), "{path}");
    }
}

#[tokio::test]
async fn providers_are_shown_by_their_display_names() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    crate::key_helpers::create_token(
        &app,
        &s,
        json!({"name": "two", "providers": ["openai", "anthropic"]}),
    )
    .await;
    crate::key_helpers::create_token(&app, &s, json!({"name": "any"})).await;
    crate::proxy::set_ceiling(&app, &s, "openai", "5.00").await;
    let tokens = page_text(&app, &s, "/dashboard/settings/tokens").await;
    assert!(tokens.contains(">OpenAI, Anthropic</td>"));
    assert!(tokens.contains(">all providers</td>"));
    let keys = page_text(&app, &s, "/dashboard/settings/keys").await;
    assert!(keys.contains("OpenAI: $0.00 of $5.00 (none)"));
    seed_calls(&app, &s).await;
    let overview = page_text(&app, &s, "/dashboard").await;
    assert!(overview.contains(r#"<td data-label="Provider">OpenAI</td>"#));
    assert!(!overview.contains(">openai</td>"));
}

#[tokio::test]
async fn the_new_password_form_states_the_password_rule() {
    let app = TestApp::spawn().await;
    let body = app
        .get("/reset/confirm", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains(r#"minlength="12" maxlength="128""#));
    assert!(body.contains(r#"aria-describedby="password-rule""#));
    assert!(body.contains("At least 12 characters (at most 128)."));
}

#[tokio::test]
async fn destructive_buttons_look_destructive_and_ask_first() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    crate::key_helpers::create_token(&app, &s, json!({"name": "t"})).await;
    crate::proxy::set_ceiling(&app, &s, "openai", "5.00").await;
    let mut seen = 0;
    for path in [
        "/dashboard/settings/tokens",
        "/dashboard/settings/sessions",
        "/dashboard/settings/keys",
    ] {
        let body = page_text(&app, &s, path).await;
        for button in body.split("<button").skip(1) {
            let tag = button.split('>').next().unwrap();
            let destructive = tag.contains(r#"data-call="DELETE"#) || tag.contains(r#"/reset""#);
            if !destructive {
                continue;
            }
            seen += 1;
            assert!(tag.contains(r#"class="danger""#), "{path}: <button{tag}>");
            assert!(tag.contains("data-confirm=\""), "{path}: <button{tag}>");
            let loosens_ceiling = tag.contains("/api/v1/ceilings/");
            assert_eq!(
                tag.contains("data-reauth"),
                loosens_ceiling,
                "{path}: <button{tag}>"
            );
        }
    }
    assert_eq!(
        seen, 4,
        "token revoke, session revoke, ceiling reset and removal"
    );
}

/// One OpenAI call in the recent-calls list.
async fn seed_calls(app: &TestApp, s: &crate::helpers::Session) {
    let account = crate::key_helpers::account_id(app, s).await;
    app.sql(move |conn| {
        conn.execute(
            "INSERT INTO recent_calls (account_id, provider, at, method, route, status, outcome, model, input_tokens, output_tokens, cost_micros)
             VALUES (?1, 'openai', ?2, 'POST', '/v1/chat/completions', 200, 'ok', 'gpt-4o-mini', 1200, 350, 4200)",
            [account, MOMENT],
        )
    })
    .await;
}

/// Spend on `day` (days before today, UTC) for the chart.
async fn seed_day(app: &TestApp, account: i64, provider: &str, days_ago: i64, micros: i64) {
    let now = keybroker::clock::Clock::unix(&app.clock);
    let hour = now - now.rem_euclid(86_400) - days_ago * 86_400 + 3600;
    let provider = provider.to_owned();
    app.sql(move |conn| {
        conn.execute(
            "INSERT INTO usage_hourly (account_id, provider, hour, calls, input_tokens, output_tokens, spend_micros)
             VALUES (?1, ?2, ?3, 2, 100, 40, ?4)",
            keybroker::params![account, provider, hour, micros],
        )
    })
    .await;
}

#[tokio::test]
async fn the_spend_page_draws_a_bar_per_provider_and_day_of_the_last_30_days() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let account = crate::key_helpers::account_id(&app, &s).await;
    seed_day(&app, account, "openai", 0, 2_500_000).await;
    seed_day(&app, account, "openai", 3, 500_000).await;
    seed_day(&app, account, "anthropic", 3, 1_500_000).await;
    seed_day(&app, account, "openai", 29, 100_000).await;
    seed_day(&app, account, "openai", 30, 9_000_000).await;
    let body = page_text(&app, &s, "/dashboard/spend").await;
    assert_eq!(
        body.matches("<rect class=\"bar ").count(),
        4,
        "day 30 is out of range"
    );
    assert_eq!(
        body.matches("<rect class=\"bar s0\"").count(),
        3,
        "OpenAI's colour"
    );
    assert_eq!(
        body.matches("<rect class=\"bar s1\"").count(),
        1,
        "Anthropic's colour"
    );
    assert!(body.contains(r#"<li><span class="swatch s0"></span>OpenAI</li><li><span class="swatch s1"></span>Anthropic</li>"#));
    assert!(
        body.contains("Highest day: $2.50"),
        "the highest day in range"
    );
    assert!(
        body.contains(r#"height="1000""#),
        "the highest day fills the chart"
    );
    assert!(
        body.contains(r#">Anthropic</td><td data-label="Calls">2</td><td data-label="Refused">0</td><td data-label="Tokens in">100</td><td data-label="Tokens out">40</td><td data-label="Spend (USD)">1.50</td>"#)
    );
    assert!(!body.contains("style="), "no inline style");
    assert!(!body.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn the_spend_page_lists_each_providers_period_and_recent_calls() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let account = crate::key_helpers::account_id(&app, &s).await;
    crate::proxy::set_ceiling(&app, &s, "openai", "5.00").await;
    let spent = keybroker::money::Money::from_micros(1_250_000);
    app.state
        .proxy
        .ledger
        .reserve(account, "anthropic", spent)
        .unwrap()
        .settle(spent);
    seed_calls(&app, &s).await;
    let body = page_text(&app, &s, "/dashboard/spend").await;
    assert!(body.contains("OpenAI: $0.00 of $5.00 (none)"));
    assert!(body.contains("Anthropic: $1.25 spent, no ceiling"));
    assert_eq!(
        body.matches("<meter").count(),
        1,
        "a meter only under a ceiling"
    );
    assert!(body.contains("No spend in the last 30 days."));
    // Seeded rows carry no token or latency: those cells are empty.
    assert!(body.contains(r#">OpenAI</td><td data-label="Token"></td><td data-label="Model">gpt-4o-mini</td><td class="t" data-label="Tokens in → out">1200 → 350</td><td class="t" data-label="Latency"></td>"#));
    assert!(body.contains("2023-11-14 22:13:20Z"));
}

#[tokio::test]
async fn the_spend_page_shows_the_token_and_latency_of_a_proxied_call() {
    let (app, _upstream) = crate::proxy::app_with_upstream().await;
    let s = app.signed_up().await;
    crate::proxy::add_key(&app, &s, "openai", crate::proxy::OPENAI_KEY).await;
    let res = app
        .post_json(
            "/api/v1/tokens",
            Some(&s),
            &serde_json::json!({"name": "night-agent"}),
        )
        .send()
        .await
        .unwrap();
    let t = res.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .json(&crate::proxy::chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let body = page_text(&app, &s, "/dashboard/spend").await;
    assert!(
        body.contains(r#"<td data-label="Token">night-agent</td>"#),
        "{body}"
    );
    let latency = body
        .split(r#"<td class="t" data-label="Latency">"#)
        .nth(1)
        .and_then(|rest| rest.split(" ms</td>").next())
        .and_then(|ms| ms.parse::<u64>().ok());
    assert!(latency.is_some(), "a latency in ms: {body}");
}
