//! OAuth sign-in against a local fake provider (wiremock): authorization code with PKCE (S256),
//! a single-use `state` bound to the browser's pre-login cookie, verified emails only, account
//! creation and linking, and unlinking. The test plays the browser and follows the redirects by
//! hand.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keybroker::accounts::oauth::OAuthClientSettings;
use keybroker::accounts::signup::SignupPolicy;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, Url};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{session_cookie, unique_email, Session, TestApp, PASSWORD};

const PUBLIC_URL: &str = "https://kb.example";
const ACCESS_TOKEN: &str = "gho_fake_access_token_0123456789";
const CLIENT_SECRET: &str = "fake-client-secret-for-tests";

struct Fake {
    server: MockServer,
}

impl Fake {
    /// A provider whose token endpoint accepts one code and whose user-info says `email`.
    async fn github(email: &str, verified: bool) -> Self {
        let server = MockServer::start().await;
        Self::token_endpoint(&server).await;
        Mock::given(method("GET"))
            .and(path("/user"))
            .and(header("authorization", format!("Bearer {ACCESS_TOKEN}")))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"id": 4242, "login": "octo"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/user/emails"))
            .and(header("authorization", format!("Bearer {ACCESS_TOKEN}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                {"email": "secondary@example.com", "primary": false, "verified": true, "visibility": null},
                {"email": email, "primary": true, "verified": verified, "visibility": "private"},
            ])))
            .mount(&server)
            .await;
        Self { server }
    }

    async fn google(email: &str, sub: &str) -> Self {
        let server = MockServer::start().await;
        Self::token_endpoint(&server).await;
        Mock::given(method("GET"))
            .and(path("/userinfo"))
            .and(header("authorization", format!("Bearer {ACCESS_TOKEN}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"sub": sub, "email": email, "email_verified": true})),
            )
            .mount(&server)
            .await;
        Self { server }
    }

    async fn token_endpoint(server: &MockServer) {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("code=the-code"))
            .and(body_string_contains("code_verifier="))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": ACCESS_TOKEN,
                "token_type": "bearer",
                "scope": "read:user,user:email",
            })))
            .mount(server)
            .await;
    }

    fn settings(&self, emails: bool) -> OAuthClientSettings {
        let uri = self.server.uri();
        OAuthClientSettings {
            client_id: "fake-client-id".to_owned(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
            auth_url: format!("{uri}/authorize"),
            token_url: format!("{uri}/token"),
            userinfo_url: format!("{uri}/{}", if emails { "user" } else { "userinfo" }),
            emails_url: emails.then(|| format!("{uri}/user/emails")),
        }
    }

    /// The form fields of the token requests the provider received.
    async fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.url.path() == "/token")
            .map(|r| {
                let body = String::from_utf8(r.body).unwrap();
                Url::parse(&format!("http://x/?{body}"))
                    .unwrap()
                    .query_pairs()
                    .into_owned()
                    .collect()
            })
            .collect()
    }
}

async fn spawn_github(fake: &Fake) -> TestApp {
    let github = fake.settings(true);
    TestApp::spawn_with(|s| {
        s.public_url = Some(PUBLIC_URL.to_owned());
        s.oauth.github = Some(github);
    })
    .await
}

async fn spawn_google(fake: &Fake) -> TestApp {
    let google = fake.settings(false);
    TestApp::spawn_with(|s| {
        s.public_url = Some(PUBLIC_URL.to_owned());
        s.oauth.google = Some(google);
    })
    .await
}

/// What `/start` gave the browser: the provider URL's query and the pre-login cookie.
struct Started {
    params: HashMap<String, String>,
    location: String,
    cookie: String,
    set_cookie: String,
}

async fn start(app: &TestApp, provider: &str) -> Started {
    let res = app
        .get(&format!("/auth/oauth/{provider}/start"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let location = res.headers()[LOCATION].to_str().unwrap().to_owned();
    let set_cookie = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("__Host-kb_oauth="))
        .expect("pre-login cookie");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let params = Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    Started {
        params,
        location,
        cookie,
        set_cookie,
    }
}

async fn callback(app: &TestApp, provider: &str, query: &str, cookie: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/auth/oauth/{provider}/callback?{query}")))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

/// The provider sent the browser back with a code for this sign-in.
async fn come_back(app: &TestApp, provider: &str, started: &Started) -> reqwest::Response {
    let query = format!("code=the-code&state={}", started.params["state"]);
    callback(app, provider, &query, &started.cookie).await
}

async fn signed_in(app: &TestApp, res: reqwest::Response) -> (Session, Value) {
    assert_eq!(res.status(), 200);
    let cookie = session_cookie(res.headers()).expect("session cookie");
    let me: Value = app
        .client
        .get(app.url("/api/v1/auth/session"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = Session {
        cookie,
        csrf: me["csrf_token"].as_str().unwrap().to_owned(),
        email: me["email"].as_str().unwrap().to_owned(),
    };
    (session, me)
}

#[tokio::test]
async fn a_first_github_sign_in_with_pkce_creates_an_account_for_the_verified_email() {
    let email = unique_email();
    let fake = Fake::github(&email, true).await;
    let app = spawn_github(&fake).await;

    let started = start(&app, "github").await;
    assert!(started
        .location
        .starts_with(&format!("{}/authorize?", fake.server.uri())));
    let p = &started.params;
    assert_eq!(p["response_type"], "code");
    assert_eq!(p["client_id"], "fake-client-id");
    assert_eq!(
        p["redirect_uri"],
        "https://kb.example/auth/oauth/github/callback"
    );
    assert_eq!(p["code_challenge_method"], "S256");
    assert!(p["scope"].contains("user:email"));
    assert!(p["state"].len() >= 43);
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(started.set_cookie.contains(attr), "{}", started.set_cookie);
    }

    let res = come_back(&app, "github", &started).await;
    let cleared = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("__Host-kb_oauth=;"));
    assert!(cleared, "the pre-login cookie is cleared");
    let (session, me) = signed_in(&app, res).await;
    assert_eq!(session.email, email);
    assert_eq!(me["oauth_providers"], json!(["github"]));

    // The token request proved possession of the verifier behind the challenge.
    let tokens = fake.token_requests().await;
    assert_eq!(tokens.len(), 1);
    let verifier = &tokens[0]["code_verifier"];
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    assert_eq!(challenge, p["code_challenge"]);
    assert_eq!(tokens[0]["redirect_uri"], p["redirect_uri"]);
    assert_eq!(tokens[0]["client_secret"], CLIENT_SECRET);

    // An OAuth-only account has no password to sign in with.
    assert_eq!(app.login(&email, PASSWORD).await.status(), 401);

    // Signing in again finds the same account through the provider's user id.
    let again = come_back(&app, "github", &start(&app, "github").await).await;
    let (_, me_again) = signed_in(&app, again).await;
    assert_eq!(me_again["email"], email);

    let session_id = session.cookie.split_once('=').unwrap().1;
    for secret in [
        ACCESS_TOKEN,
        CLIENT_SECRET,
        verifier.as_str(),
        p["state"].as_str(),
        session_id,
        started.cookie.split_once('=').unwrap().1,
    ] {
        app.assert_not_logged(secret);
    }
}

#[tokio::test]
async fn a_google_sign_in_links_an_existing_account_by_its_verified_email() {
    let app_email = unique_email();
    let fake = Fake::google(&app_email, "google-sub-1").await;
    let app = spawn_google(&fake).await;
    app.signup(&app_email, PASSWORD).await;

    let res = come_back(&app, "google", &start(&app, "google").await).await;
    let (session, me) = signed_in(&app, res).await;
    assert_eq!(session.email, app_email);
    assert_eq!(me["oauth_providers"], json!(["google"]));
    let p = start(&app, "google").await.params;
    assert_eq!(p["scope"], "openid email");
    // The password still works too.
    assert_eq!(app.login(&app_email, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn an_oauth_sign_in_confirms_an_unconfirmed_account_and_drops_its_sign_up_password() {
    let email = unique_email();
    let fake = Fake::google(&email, "google-sub-2").await;
    let app = spawn_google(&fake).await;
    // Someone signed the address up with a password of their choosing and never confirmed it.
    assert_eq!(app.signup_request(&email, PASSWORD).await.status(), 202);
    let planted =
        crate::helpers::take_signup_token(&app.data_dir.path().join("data"), &email).await;

    let res = come_back(&app, "google", &start(&app, "google").await).await;
    let (session, me) = signed_in(&app, res).await;
    assert_eq!(session.email, email);
    assert_eq!(me["oauth_providers"], json!(["google"]));
    // The unproven password signs nobody in, and the mailed link is void.
    assert_eq!(app.login(&email, PASSWORD).await.status(), 401);
    assert_eq!(app.confirm_signup(&planted, PASSWORD).await.status(), 400);
}

#[tokio::test]
async fn a_bad_state_is_refused_without_calling_the_provider() {
    let fake = Fake::github(&unique_email(), true).await;
    let app = spawn_github(&fake).await;
    let started = start(&app, "github").await;
    for query in [
        "code=the-code&state=not-the-state".to_owned(),
        "code=the-code".to_owned(),
        format!("code=the-code&state={}x", started.params["state"]),
    ] {
        let res = callback(&app, "github", &query, &started.cookie).await;
        assert_eq!(res.status(), 400, "{query}");
        assert!(session_cookie(res.headers()).is_none());
        assert!(res
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    assert!(fake.token_requests().await.is_empty());
}

#[tokio::test]
async fn a_state_is_single_use() {
    let fake = Fake::github(&unique_email(), true).await;
    let app = spawn_github(&fake).await;
    let started = start(&app, "github").await;
    assert_eq!(come_back(&app, "github", &started).await.status(), 200);
    let replay = come_back(&app, "github", &started).await;
    assert_eq!(replay.status(), 400);
    assert!(session_cookie(replay.headers()).is_none());
}

#[tokio::test]
async fn a_state_is_bound_to_the_browser_that_started_the_sign_in() {
    let fake = Fake::github(&unique_email(), true).await;
    let app = spawn_github(&fake).await;
    let victim = start(&app, "github").await;
    let attacker = start(&app, "github").await;
    // The victim's state arriving with the attacker's cookie (login CSRF), or with none.
    let query = format!("code=the-code&state={}", victim.params["state"]);
    assert_eq!(
        callback(&app, "github", &query, &attacker.cookie)
            .await
            .status(),
        400
    );
    assert_eq!(callback(&app, "github", &query, "").await.status(), 400);
    assert!(fake.token_requests().await.is_empty());
}

#[tokio::test]
async fn a_state_expires_after_ten_minutes() {
    let fake = Fake::github(&unique_email(), true).await;
    let app = spawn_github(&fake).await;
    let started = start(&app, "github").await;
    app.clock.advance(time::Duration::minutes(10));
    assert_eq!(come_back(&app, "github", &started).await.status(), 400);
}

#[tokio::test]
async fn an_unverified_email_does_not_sign_in_or_create_an_account() {
    let email = unique_email();
    let fake = Fake::github(&email, false).await;
    let app = spawn_github(&fake).await;
    let res = come_back(&app, "github", &start(&app, "github").await).await;
    assert_eq!(res.status(), 403);
    assert!(session_cookie(res.headers()).is_none());
    // The address is still free for a normal sign-up.
    app.signup(&email, PASSWORD).await;
}

#[tokio::test]
async fn a_provider_that_is_not_configured_is_404() {
    let app = TestApp::spawn_with(|s| s.public_url = Some(PUBLIC_URL.to_owned())).await;
    for path in [
        "/auth/oauth/github/start",
        "/auth/oauth/google/start",
        "/auth/oauth/myspace/start",
    ] {
        assert_eq!(
            app.get(path, None).send().await.unwrap().status(),
            404,
            "{path}"
        );
    }
}

#[tokio::test]
async fn unlinking_needs_a_recent_reauth() {
    let email = unique_email();
    let fake = Fake::github(&email, true).await;
    let app = spawn_github(&fake).await;
    let s = app.signup(&email, PASSWORD).await;
    come_back(&app, "github", &start(&app, "github").await).await;

    let unlink = || {
        app.send(Method::DELETE, "/api/v1/auth/oauth/github", Some(&s))
            .send()
    };
    let res = unlink().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "reauth_required"
    );
    let reauth = app
        .post_json(
            "/api/v1/auth/reauth",
            Some(&s),
            &json!({"password": PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reauth.status(), 200);
    assert_eq!(unlink().await.unwrap().status(), 204);
    assert_eq!(
        unlink().await.unwrap().status(),
        404,
        "nothing left to unlink"
    );
}

#[tokio::test]
async fn the_last_way_to_sign_in_cannot_be_unlinked() {
    let email = unique_email();
    let fake = Fake::github(&email, true).await;
    let app = spawn_github(&fake).await;
    let res = come_back(&app, "github", &start(&app, "github").await).await;
    let (s, _) = signed_in(&app, res).await;
    // An OAuth-only account cannot reauth with a password; mark the session fresh in the
    // database to reach the check behind it.
    app.sql(|conn| conn.execute("UPDATE sessions SET reauth_until = ?1", [i64::MAX]))
        .await;
    let res = app
        .send(Method::DELETE, "/api/v1/auth/oauth/github", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "last_sign_in_method"
    );
}

#[tokio::test]
async fn oauth_creates_no_account_unless_sign_up_is_open() {
    let email = unique_email();
    let fake = Fake::github(&email, true).await;
    let github = fake.settings(true);
    for policy in [SignupPolicy::Invite, SignupPolicy::Closed] {
        let github = github.clone();
        let app = TestApp::spawn_with(move |s| {
            s.public_url = Some(PUBLIC_URL.to_owned());
            s.oauth.github = Some(github);
            s.signup = policy;
        })
        .await;
        let res = come_back(&app, "github", &start(&app, "github").await).await;
        assert_eq!(res.status(), 403, "{policy:?}");
        assert!(session_cookie(res.headers()).is_none());
        let accounts: i64 = app
            .sql(|conn| conn.query_row("SELECT COUNT(*) FROM accounts", (), |r| r.get(0)))
            .await;
        assert_eq!(accounts, 0, "{policy:?}");
    }
}

#[tokio::test]
async fn a_disabled_account_cannot_sign_in_with_oauth() {
    let email = unique_email();
    let fake = Fake::github(&email, true).await;
    let app = spawn_github(&fake).await;
    app.signup(&email, PASSWORD).await;
    app.sql(|conn| conn.execute("UPDATE accounts SET disabled_at = 1", ()))
        .await;
    let res = come_back(&app, "github", &start(&app, "github").await).await;
    assert_eq!(res.status(), 403);
    assert!(session_cookie(res.headers()).is_none());
}
