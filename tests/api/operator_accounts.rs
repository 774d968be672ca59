//! Issue 26, accounts and operators: the `keybroker accounts ...` commands end to end (the real
//! binary on the test server's data directory, beside the running server), who may sign up
//! (`open`, `invite`, `closed`), the honest answers when there is no SMTP or no public URL, the
//! login page's and answer's word on plain HTTP from another machine, and `serve`'s start-up
//! warnings on a non-loopback address.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keybroker::accounts::signup::SignupPolicy;
use keybroker::config::SecretSources;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::cli::keybroker;
use crate::helpers::{random_b64, take_signup_token, unique_email, TestApp, PASSWORD};
use crate::key_helpers::error_type;
use crate::mail_support::SmtpSink;
use crate::proxy::{add_key, chat, token, OPENAI_KEY};

/// The secrets a test server runs with, shared with the CLI through its environment.
struct Secrets(Vec<(&'static str, String)>);

impl Secrets {
    fn new() -> Self {
        Self(vec![
            ("KEYBROKER_MASTER_KEY", random_b64(32)),
            ("KEYBROKER_EMAIL_PEPPER", random_b64(32)),
            ("KEYBROKER_SESSION_SECRET", random_b64(32)),
            ("KEYBROKER_FINGERPRINT_SECRET", random_b64(32)),
        ])
    }

    fn get(&self, name: &str) -> SecretString {
        SecretString::from(
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap(),
        )
    }

    fn sources(&self) -> SecretSources {
        SecretSources {
            master_key: Some(self.get("KEYBROKER_MASTER_KEY")),
            master_keys: None,
            active_master_key: None,
            email_pepper: Some(self.get("KEYBROKER_EMAIL_PEPPER")),
            session_secret: Some(self.get("KEYBROKER_SESSION_SECRET")),
            fingerprint_secret: Some(self.get("KEYBROKER_FINGERPRINT_SECRET")),
        }
    }
}

/// A test server whose secrets the CLI knows.
async fn spawn(configure: impl FnOnce(&mut keybroker::config::Settings)) -> (TestApp, Secrets) {
    let secrets = Secrets::new();
    let sources = secrets.sources();
    let app = TestApp::spawn_with(move |s| {
        s.secrets = sources;
        configure(s);
    })
    .await;
    (app, secrets)
}

/// `keybroker accounts ARGS...` on the app's data directory (the server keeps running).
fn accounts(app: &TestApp, secrets: &Secrets, args: &[&str]) -> Output {
    accounts_with(app, secrets, args, &[])
}

fn accounts_with(app: &TestApp, secrets: &Secrets, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = keybroker()
        .arg("accounts")
        .args(args)
        .arg("--data-dir")
        .arg(app.data_dir.path().join("data"))
        .args(app.database_args())
        .envs(secrets.0.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(env.iter().copied())
        .output()
        .expect("run keybroker accounts");
    assert!(
        out.status.success(),
        "keybroker accounts {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first `prefix...` token in `text`.
fn token_in(text: &str, prefix: &str) -> String {
    let rest = &text[text.find(prefix).expect("a token in the output")..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

async fn operator_audits(app: &TestApp, action: &str) -> i64 {
    let action = action.to_owned();
    app.sql(move |conn| {
        conn.query_row(
            "SELECT COUNT(*) FROM audit_log WHERE actor = 'operator' AND action = ?1",
            [action],
            |r| r.get(0),
        )
    })
    .await
}

async fn signup_with_invite(app: &TestApp, email: &str, invite: Option<&str>) -> reqwest::Response {
    let mut body = json!({"email": email, "password": PASSWORD});
    if let Some(i) = invite {
        body["invite"] = json!(i);
    }
    app.post_json("/api/v1/auth/signup", None, &body)
        .send()
        .await
        .unwrap()
}

// ---- accounts list, confirm ----

#[tokio::test]
async fn list_shows_every_account_and_marks_the_first_as_the_operators() {
    let (app, secrets) = spawn(|_| {}).await;
    let first = app.signed_up().await;
    let second = unique_email();
    assert_eq!(app.signup_request(&second, PASSWORD).await.status(), 202);
    let out = stdout(&accounts(&app, &secrets, &["list"]));
    let line_of = |email: &str| {
        out.lines()
            .find(|l| l.ends_with(email))
            .unwrap_or_else(|| panic!("{email} listed in:\n{out}"))
            .to_owned()
    };
    let (a, b) = (line_of(&first.email), line_of(&second));
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let (a, b) = (cols(&a), cols(&b));
    // id, created, confirmed, disabled, last sign-in, operator, email
    assert_eq!(a[0], "1");
    assert_ne!(a[2], "-", "confirmed");
    assert_eq!(a[3], "-", "not disabled");
    assert_ne!(a[4], "-", "signed in at confirmation");
    assert_eq!(a[5], "yes");
    assert_eq!(b[2], "-", "not confirmed");
    assert_eq!(b[4], "-", "never signed in");
    assert_eq!(b[5], "-", "not the operator");
    assert!(out.contains("2 account(s)"));
}

#[tokio::test]
async fn confirm_lets_an_unconfirmed_account_sign_in_with_its_password() {
    let (app, secrets) = spawn(|_| {}).await;
    let email = unique_email();
    assert_eq!(app.signup_request(&email, PASSWORD).await.status(), 202);
    assert_eq!(app.login(&email, PASSWORD).await.status(), 401);
    let out = stdout(&accounts(&app, &secrets, &["confirm", &email]));
    assert!(out.contains("confirmed"), "{out}");
    assert_eq!(app.login(&email, PASSWORD).await.status(), 200);
    assert_eq!(operator_audits(&app, "signup.confirm.operator").await, 1);
    // The mailed link is void now.
    let mailed = take_signup_token(&app.data_dir.path().join("data"), &email).await;
    assert_eq!(app.confirm_signup(&mailed, PASSWORD).await.status(), 400);
}

#[tokio::test]
async fn an_unknown_account_is_a_failed_command_that_says_so() {
    let (app, secrets) = spawn(|_| {}).await;
    let out = keybroker()
        .args(["accounts", "disable", "nobody@example.com", "--data-dir"])
        .arg(app.data_dir.path().join("data"))
        .args(app.database_args())
        .envs(secrets.0.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account has the address"));
}

// ---- disable, enable ----

#[tokio::test]
async fn disable_refuses_sign_in_ends_sessions_and_the_proxy_within_a_second_and_enable_restores() {
    let secrets = Secrets::new();
    let (app, _upstream) = app_with_upstream_and(secrets.sources()).await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let tool = token(&app, &s, Some(&["openai"])).await;
    let call = || async {
        app.client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&tool)
            .json(&chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(call().await, 200);

    accounts(&app, &secrets, &["disable", &s.email]);
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 401);
    assert_eq!(
        app.get("/api/v1/auth/session", Some(&s))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "its session ended"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call().await, 401, "the proxy refuses its token");
    assert_eq!(operator_audits(&app, "account.disable").await, 1);

    accounts(&app, &secrets, &["enable", "1"]);
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 200);
    assert_eq!(call().await, 200, "its token works again");
    assert_eq!(operator_audits(&app, "account.enable").await, 1);
    let verify = keybroker()
        .args(["audit", "verify", "--data-dir"])
        .arg(app.data_dir.path().join("data"))
        .args(app.database_args())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "the operator's entries chain like any other"
    );
}

async fn app_with_upstream_and(
    sources: SecretSources,
) -> (TestApp, crate::fake_upstream::FakeUpstream) {
    let upstream = crate::fake_upstream::FakeUpstream::start().await;
    let url = upstream.url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.secrets = sources;
        s.proxy.upstreams.insert("openai".to_owned(), url);
    })
    .await;
    (app, upstream)
}

// ---- who may sign up ----

#[tokio::test]
async fn an_invite_lets_exactly_its_address_sign_up_once() {
    let (app, secrets) = spawn(|s| s.signup = SignupPolicy::Invite).await;
    let invited = unique_email();
    let out = stdout(&accounts(&app, &secrets, &["invite", &invited]));
    let code = token_in(&out, "kbi_");
    assert_eq!(operator_audits(&app, "signup.invite").await, 1);

    let other = unique_email();
    let refused = |res| async move { error_type(res, 403).await };
    assert_eq!(
        refused(signup_with_invite(&app, &invited, None).await).await,
        "invite_required"
    );
    assert_eq!(
        refused(signup_with_invite(&app, &other, Some(&code)).await).await,
        "invite_required",
        "another address"
    );
    assert_eq!(
        signup_with_invite(&app, &invited, Some(&code))
            .await
            .status(),
        202
    );
    let mailed = take_signup_token(&app.data_dir.path().join("data"), &invited).await;
    assert_eq!(app.confirm_signup(&mailed, PASSWORD).await.status(), 201);
    assert_eq!(
        refused(signup_with_invite(&app, &invited, Some(&code)).await).await,
        "invite_required",
        "used"
    );
}

#[tokio::test]
async fn the_invite_sign_up_page_asks_for_the_code() {
    let (app, _) = spawn(|s| s.signup = SignupPolicy::Invite).await;
    let page = app
        .get("/signup", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"name="invite""#), "{page}");
}

#[tokio::test]
async fn closed_refuses_every_sign_up_before_looking_at_the_address() {
    let (app, _) = spawn(|s| s.signup = SignupPolicy::Closed).await;
    let mut bodies = Vec::new();
    for email in [unique_email(), unique_email(), "not an address".to_owned()] {
        let res = signup_with_invite(&app, &email, None).await;
        assert_eq!(res.status(), 403);
        bodies.push(res.json::<Value>().await.unwrap());
    }
    assert_eq!(bodies[0]["error"]["type"], "signup_closed");
    for b in &bodies {
        assert_eq!(b["error"]["type"], bodies[0]["error"]["type"]);
        assert_eq!(b["error"]["message"], bodies[0]["error"]["message"]);
    }
    let page = app
        .get("/signup", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sign-up is closed"));
    assert!(!page.contains(r#"id="signup""#));
}

// ---- reset-password ----

#[tokio::test]
async fn reset_password_prints_a_link_that_works_once() {
    let (app, secrets) = spawn(|_| {}).await;
    let s = app.signed_up().await;
    let out = stdout(&accounts_with(
        &app,
        &secrets,
        &["reset-password", &s.email],
        &[("KEYBROKER_PUBLIC_URL", "https://kb.example")],
    ));
    assert!(
        out.contains("https://kb.example/reset/confirm?token=kbr_"),
        "{out}"
    );
    let code = token_in(&out, "kbr_");
    let new_password = "a brand new passphrase";
    let redeem = || {
        app.post_json(
            "/api/v1/auth/password-reset/confirm",
            None,
            &json!({"token": code, "password": new_password}),
        )
        .send()
    };
    assert_eq!(redeem().await.unwrap().status(), 204);
    assert_eq!(redeem().await.unwrap().status(), 400, "works once");
    assert_eq!(app.login(&s.email, new_password).await.status(), 200);
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 401);
    assert_eq!(operator_audits(&app, "password_reset.operator").await, 1);
}

// ---- honest messages ----

#[tokio::test]
async fn without_smtp_the_sign_up_answer_and_page_name_the_outbox_folder() {
    let (app, _) = spawn(|_| {}).await;
    let res = app.signup_request(&unique_email(), PASSWORD).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let outbox = app.data_dir.path().join("data").join("outbox");
    assert_eq!(body["outbox"], outbox.display().to_string());
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(&format!("outbox folder {}", outbox.display())));
    let page = app
        .get("/signup", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("no SMTP server configured"), "{page}");
}

#[tokio::test]
async fn with_smtp_the_sign_up_answer_names_no_folder() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let (app, _) = spawn(move |s| s.mail.smtp_url = Some(SecretString::from(url))).await;
    let body: Value = app
        .signup_request(&unique_email(), PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"status": "accepted", "message": "check your mail: the next step is in a message to this address"})
    );
}

#[tokio::test]
async fn without_a_public_url_the_reset_answer_and_page_say_no_link_can_be_mailed() {
    let (app, _) = spawn(|_| {}).await;
    let s = app.signed_up().await;
    for email in [s.email.as_str(), "nobody@example.com"] {
        let res = app
            .post_json(
                "/api/v1/auth/password-reset",
                None,
                &json!({"email": email}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "unavailable");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("keybroker accounts reset-password"));
    }
    let page = app
        .get("/reset", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("cannot mail reset links"), "{page}");
    assert!(!page.contains("Send reset link"));
}

#[tokio::test]
async fn plain_http_from_another_machine_is_told_why_sign_in_will_not_stick() {
    // Behind a trusted proxy that says the client is 203.0.113.7 and sends no
    // X-Forwarded-Proto: plain HTTP from another machine.
    let (app, _) = spawn(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let s = app.signed_up().await;
    let remote = |rb: reqwest::RequestBuilder| rb.header("X-Forwarded-For", "203.0.113.7");
    let page = remote(app.get("/login", None))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="transport-warning""#), "{page}");
    assert!(page.contains("--tls-cert"));
    let res = remote(app.post_json(
        "/api/v1/auth/login",
        None,
        &json!({"email": s.email, "password": PASSWORD}),
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("set-cookie").is_some(),
        "the cookie is sent as ever"
    );
    let body: Value = res.json().await.unwrap();
    assert!(body["warning"].as_str().unwrap().contains("plain HTTP"));

    // Over HTTPS (as the proxy says) or from loopback: nothing to say.
    let https = remote(app.get("/login", None))
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!https.contains("transport-warning"));
    let local = app
        .get("/login", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!local.contains("transport-warning"));
    let body: Value = app.login(&s.email, PASSWORD).await.json().await.unwrap();
    assert!(body.get("warning").is_none());
}

// ---- start-up warnings of the real binary ----

/// Starts `serve` with `args` and returns what it wrote to stderr up to its "listening" line,
/// then stops it. It binds where told but no traffic is sent to it.
fn start_up_lines(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = keybroker()
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("keybroker listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("keybroker listening"), "{seen}");
    seen
}

#[test]
fn serve_on_a_public_address_warns_about_plain_http_and_open_sign_up() {
    let seen = start_up_lines(&["--bind", "0.0.0.0:0"]);
    let plain = seen
        .lines()
        .find(|l| l.contains("serving plain HTTP on a non-loopback address"))
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(
        plain.contains("WARN") && plain.contains("--tls-cert") && plain.contains("--trusted-proxy")
    );
    let open = seen
        .lines()
        .find(|l| l.contains("sign-up is open to anyone"))
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(open.contains("KEYBROKER_SIGNUP=invite"));
    assert!(seen.contains("mail (sign-up confirmations included) is written to the outbox folder"));
}

#[test]
fn serve_behind_a_proxy_with_invite_only_sign_up_does_not_warn() {
    let seen = start_up_lines(&[
        "--bind",
        "0.0.0.0:0",
        "--trusted-proxy",
        "127.0.0.1",
        "--signup",
        "invite",
    ]);
    assert!(!seen.contains("serving plain HTTP"), "{seen}");
    assert!(!seen.contains("sign-up is open"), "{seen}");
}

#[test]
fn serve_on_loopback_does_not_warn() {
    let seen = start_up_lines(&["--bind", "127.0.0.1:0"]);
    assert!(!seen.contains("serving plain HTTP"), "{seen}");
    assert!(!seen.contains("sign-up is open"), "{seen}");
}
