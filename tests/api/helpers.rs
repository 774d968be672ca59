//! `TestApp::spawn()`: a fresh server on port 0 with its own data directory, random secrets, a
//! manual clock, and access to the (redacted) captured logs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix_web::web;
use base64::Engine as _;
use keybroker::clock::ManualClock;
use keybroker::config::{Missing, SecretSources, Settings};
use keybroker::startup::{AppState, Application};
use rand::RngCore;
use reqwest::header::{HeaderMap, COOKIE, SET_COOKIE};
use secrecy::SecretString;
use serde_json::Value;
use tempfile::TempDir;

pub const PASSWORD: &str = "correct horse battery staple";

pub fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// The plain-HTTP redirect listener's port, when `redirect_http` was set.
    pub redirect_port: Option<u16>,
    /// The `metrics_bind` listener's port, when the settings asked for one.
    pub metrics_port: Option<u16>,
    pub data_dir: TempDir,
    pub clock: ManualClock,
    pub state: web::Data<AppState>,
    pub client: reqwest::Client,
    pub master_key_b64: String,
    logs: Arc<Mutex<Vec<u8>>>,
    /// The PostgreSQL URL when the suite runs on PostgreSQL.
    pub database_url: Option<String>,
}

/// A signed-in browser: the session cookie and the CSRF token the API gave it.
#[derive(Clone, Debug)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
    pub email: String,
}

/// `KEYBROKER_TEST_BACKEND=postgres`: every `TestApp` gets a fresh database on the test
/// process's PostgreSQL cluster instead of a SQLite file, so the whole suite runs on either
/// backend (`.ci/run` runs it on both).
pub fn on_postgres() -> bool {
    std::env::var("KEYBROKER_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}

/// A new, empty database on the shared test cluster: its URL and settings.
pub fn fresh_postgres() -> (String, keybroker::db::PgSettings) {
    let url = crate::pg_cluster::PgCluster::shared().create_database();
    let pg = keybroker::db::PgSettings::parse(SecretString::from(url.clone()))
        .expect("a valid test URL");
    (url, pg)
}

pub fn test_settings(data_dir: PathBuf, master_key_b64: &str, clock: &ManualClock) -> Settings {
    let mut settings = Settings::new(([127, 0, 0, 1], 0).into(), data_dir);
    settings.workers = Some(1);
    settings.public_url = None;
    settings.missing_secrets = Missing::Refuse;
    settings.clock = Arc::new(clock.clone());
    // The fake upstream's switch into hostile behaviours, and the rotation test's phase marker:
    // not on the built-in allow-list.
    settings
        .proxy
        .forward_headers
        .extend(["x-fake-mode".to_owned(), "x-test-phase".to_owned()]);
    settings.secrets = SecretSources {
        master_key: Some(SecretString::from(master_key_b64.to_owned())),
        master_keys: None,
        active_master_key: None,
        email_pepper: Some(SecretString::from(random_b64(32))),
        session_secret: Some(SecretString::from(random_b64(32))),
        fingerprint_secret: Some(SecretString::from(random_b64(32))),
    };
    settings
}

/// The session cookie set by a response, as `name=value`.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-kb_session=") && !v.starts_with("__Host-kb_session=;"))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let logs = keybroker::telemetry::init_capture();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::default();
        let master_key_b64 = random_b64(32);
        let mut settings = test_settings(data_dir.path().join("data"), &master_key_b64, &clock);
        let mut database_url = None;
        if on_postgres() {
            let (url, pg) = fresh_postgres();
            database_url = Some(url);
            settings.database = Some(pg);
        }
        configure(&mut settings);
        let app = Application::build(settings)
            .await
            .expect("application builds");
        let port = app.port();
        let redirect_port = app.redirect_port();
        let metrics_port = app.metrics_port();
        let state = app.state();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            redirect_port,
            metrics_port,
            data_dir,
            clock,
            state,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            master_key_b64,
            logs,
            database_url,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Runs `f` in one write transaction on this server's store (SQLite or PostgreSQL, whichever
    /// the suite runs on), off the async worker; panics on a database error.
    pub async fn sql<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&keybroker::db::Conn<'_>) -> keybroker::db::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.state.db.write(f).await.expect("test SQL")
    }

    /// The `--database-url` a command run beside this server needs (none on SQLite).
    pub fn database_args(&self) -> Vec<String> {
        match self.state.db.kind() {
            keybroker::db::Kind::Sqlite => Vec::new(),
            keybroker::db::Kind::Postgres => vec![
                "--database-url".to_owned(),
                self.database_url.clone().unwrap_or_default(),
            ],
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.path().join("data").join("keybroker.db")
    }

    /// On PostgreSQL, the whole plain-text `pg_dump` of this server's database: what the tests
    /// that read the SQLite files (no plaintext at rest) scan instead. Panics on SQLite.
    pub fn pg_dump(&self) -> String {
        let url = self
            .database_url
            .as_deref()
            .expect("pg_dump is for a server on PostgreSQL");
        let db = url.rsplit('/').next().expect("a database name in the URL");
        crate::pg_cluster::PgCluster::shared().pg_dump(db)
    }

    /// Every log line written so far by any server in this test process, after redaction.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    pub fn assert_not_logged(&self, secret: &str) {
        let logs = self.logs();
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!(
                "a secret reached the logs, in: {}",
                line.replace(secret, "<SECRET>")
            );
        }
    }

    pub fn get(&self, path: &str, session: Option<&Session>) -> reqwest::RequestBuilder {
        let mut rb = self.client.get(self.url(path));
        if let Some(s) = session {
            rb = rb.header(COOKIE, &s.cookie);
        }
        rb
    }

    /// A state-changing request from a signed-in browser: cookie and CSRF token attached.
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        session: Option<&Session>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(s) = session {
            rb = rb.header(COOKIE, &s.cookie).header("X-CSRF-Token", &s.csrf);
        }
        rb
    }

    pub fn post_json(
        &self,
        path: &str,
        session: Option<&Session>,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        self.send(reqwest::Method::POST, path, session).json(body)
    }

    /// Signs up and confirms through the mailed code, as a user would (file transport only).
    pub async fn signup(&self, email: &str, password: &str) -> Session {
        let res = self.signup_request(email, password).await;
        assert_eq!(res.status(), 202, "signup");
        let token = take_signup_token(&self.data_dir.path().join("data"), email).await;
        let res = self.confirm_signup(&token, password).await;
        assert_eq!(res.status(), 201, "signup confirmation");
        Self::session_from(res).await
    }

    /// `POST /api/v1/auth/signup` alone.
    pub async fn signup_request(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/signup",
            None,
            &serde_json::json!({"email": email, "password": password}),
        )
        .send()
        .await
        .expect("signup request")
    }

    /// `POST /api/v1/auth/signup/confirm`.
    pub async fn confirm_signup(&self, token: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/signup/confirm",
            None,
            &serde_json::json!({"token": token, "password": password}),
        )
        .send()
        .await
        .expect("signup confirmation request")
    }

    pub async fn signed_up(&self) -> Session {
        self.signup(&unique_email(), PASSWORD).await
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/login",
            None,
            &serde_json::json!({"email": email, "password": password}),
        )
        .send()
        .await
        .expect("login request")
    }

    pub async fn session_from(res: reqwest::Response) -> Session {
        let cookie = session_cookie(res.headers()).expect("session cookie set");
        let body: Value = res.json().await.expect("json body");
        Session {
            cookie,
            csrf: body["csrf_token"].as_str().expect("csrf_token").to_owned(),
            email: body["email"].as_str().expect("email").to_owned(),
        }
    }
}

/// The sign-up confirmation token (`kbs_...`) in a mail, if any.
pub fn signup_token_in(message: &str) -> Option<String> {
    let text = crate::mail_support::decode(message);
    let rest = &text[text.find("kbs_")?..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// Waits for the confirmation mail to `email` in `<data_dir>/outbox/` and returns its token. The
/// mail is removed once read (as a user deletes a used link), so tests that count mails in the
/// outbox see only the ones they caused.
pub async fn take_signup_token(data_dir: &std::path::Path, email: &str) -> String {
    let normalised = keybroker::accounts::Email::parse(email).expect("a valid address");
    let to = format!("to: {}", normalised.as_str());
    crate::mail_support::wait_until(|| {
        let dir = std::fs::read_dir(data_dir.join("outbox")).ok()?;
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "eml") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if !text.to_lowercase().contains(&to) {
                continue;
            }
            if let Some(token) = signup_token_in(&text) {
                std::fs::remove_file(&path).expect("remove the used confirmation mail");
                return Some(token);
            }
        }
        None
    })
    .await
}

/// Reads a whole file, or nothing if it does not exist.
pub fn read_or_empty(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
