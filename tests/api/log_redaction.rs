//! Every log path passes the redactor: events at any level, with a key in the message, in a field
//! or in a span, come out with markers; and the real server, logging at `debug` to stderr and to
//! `<data-dir>/logs/`, never writes a key that a client put in a path, header, body or query.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{take_signup_token, unique_email, TestApp, PASSWORD};

fn hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A unique OpenAI project key in the real shape (`…T3BlbkFJ…`), which the redactor knows by
/// sight. (`key_helpers::openai_key` is accepted by the API but has no `T3BlbkFJ`, so only the
/// broker's registration of stored keys would catch it.)
fn openai_key() -> String {
    format!("sk-proj-{}T3BlbkFJ{}", hex(), hex())
}

/// A unique Anthropic key in the real shape: 93 characters between the prefix and `AA`.
fn anthropic_key() -> String {
    let body = format!("{}{}{}", hex(), hex(), hex());
    format!("sk-ant-api03-{}AA", &body[..93])
}

/// The captured lines that carry `tag`.
fn lines_with(app: &TestApp, tag: &str) -> Vec<String> {
    app.logs()
        .lines()
        .filter(|l| l.contains(tag))
        .map(str::to_owned)
        .collect()
}

fn tag() -> String {
    format!("tag-{}", uuid::Uuid::new_v4().simple())
}

/// A unique well-formed JWT (`header.payload.signature`, base64url).
fn jwt() -> String {
    format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwianRpIjoi{}In0.{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn assert_one_redacted_line(app: &TestApp, tag: &str, secret: &str, marker: &str) {
    let lines = lines_with(app, tag);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(marker), "{}", lines[0]);
    assert!(
        !lines[0].contains(secret),
        "a key reached the log: {}",
        lines[0]
    );
}

#[tokio::test]
async fn a_key_in_an_info_message_is_redacted() {
    let app = TestApp::spawn().await;
    let (tag, key) = (tag(), openai_key());
    tracing::info!("{tag}: upstream rejected {key}");
    assert_one_redacted_line(&app, &tag, &key, "[REDACTED:openai]");
}

#[tokio::test]
async fn a_key_in_a_debug_field_is_redacted() {
    let app = TestApp::spawn().await;
    let (tag, key) = (tag(), anthropic_key());
    tracing::debug!(%tag, value = %key, "calling upstream");
    assert_one_redacted_line(&app, &tag, &key, "[REDACTED:anthropic]");
}

#[tokio::test]
async fn a_key_in_a_debug_formatted_json_field_is_redacted() {
    let app = TestApp::spawn().await;
    let (tag, key) = (tag(), openai_key());
    let upstream = json!({"error": {"message": format!("Incorrect API key provided: {key}")}});
    tracing::warn!(%tag, ?upstream, "upstream error");
    assert_one_redacted_line(&app, &tag, &key, "[REDACTED:openai]");
}

#[tokio::test]
async fn a_key_in_a_span_field_is_redacted_in_an_event_inside_the_span() {
    let app = TestApp::spawn().await;
    let (tag, key) = (tag(), openai_key());
    let span = tracing::info_span!("call", authorization = %format!("Bearer {key}"));
    span.in_scope(|| tracing::warn!(%tag, "slow upstream"));
    assert_one_redacted_line(&app, &tag, &key, "Bearer [REDACTED:openai]");
}

#[tokio::test]
async fn a_private_key_in_an_error_field_is_redacted() {
    let app = TestApp::spawn().await;
    let tag = tag();
    let body: String = (0..6)
        .map(|_| format!("{}\n", uuid::Uuid::new_v4().simple()))
        .collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\n");
    tracing::error!(%tag, error = %pem, "could not load credentials");
    let first_line = body.lines().next().unwrap();
    assert_one_redacted_line(&app, &tag, first_line, "[REDACTED:private-key]");
}

/// The binary with no KEYBROKER_* variables inherited from the developer's shell.
fn keybroker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybroker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYBROKER_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `serve` at `debug` with stderr going to a file, so the whole of it can be read after exit.
fn serve_logging_to(data: &Path, stderr: &Path, format: &str) -> Child {
    keybroker()
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", format])
        .arg("--data-dir")
        .arg(data)
        .env("KEYBROKER_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

/// The port from the start-up line (`port=N` in text, `"port":N` in JSON).
fn wait_for_port(child: &mut Child, stderr: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        let port = text
            .lines()
            .filter(|l| l.contains("keybroker listening"))
            .find_map(|l| {
                let rest = l.split("port=").nth(1).or(l.split("\"port\":").nth(1))?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            });
        if let Some(port) = port {
            return port;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn log_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Requests that carry secrets everywhere a client can put them. Returns the secrets.
async fn requests_with_planted_secrets(base: &str, data: &Path) -> Vec<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let email = unique_email();
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = take_signup_token(data, &email).await;
    let res = client
        .post(format!("{base}/api/v1/auth/signup/confirm"))
        .json(&json!({"token": token, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let s = TestApp::session_from(res).await;

    let (in_path, in_header, in_body, in_query, in_api_key_header) = (
        jwt(),
        openai_key(),
        anthropic_key(),
        openai_key(),
        openai_key(),
    );
    // A body that fails to parse on a route with a path parameter: actix-web logs the request
    // path at debug level, so this is user input that really reaches the logger.
    let res = client
        .put(format!("{base}/api/v1/keys/{in_path}"))
        .header("Cookie", &s.cookie)
        .header("X-CSRF-Token", &s.csrf)
        .header("Content-Type", "application/json")
        .body(format!("{{\"key\": \"{in_body}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_json");

    let res = client
        .get(format!("{base}/api/v1/keys"))
        .header("Authorization", format!("Bearer {in_header}"))
        .header("X-Api-Key", &in_api_key_header)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let res = client
        .post(format!("{base}/api/v1/keys"))
        .header("Cookie", &s.cookie)
        .header("X-CSRF-Token", &s.csrf)
        .json(&json!({"provider": "anthropic", "key": in_body}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let res = client
        .get(format!("{base}/api/v1/keys?api_key={in_query}"))
        .header("Cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "key_in_url");
    assert!(!body.to_string().contains(&in_query));

    vec![in_path, in_header, in_body, in_query, in_api_key_header]
}

#[tokio::test]
async fn the_server_at_debug_level_writes_no_planted_secret_to_stderr_or_its_log_file() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let stderr_path = dir.path().join("stderr");
        let mut child = serve_logging_to(&data, &stderr_path, format);
        let port = wait_for_port(&mut child, &stderr_path);
        let secrets =
            requests_with_planted_secrets(&format!("http://127.0.0.1:{port}"), &data).await;
        stop(child);

        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        let files = log_files(&data);
        assert_eq!(files.len(), 1, "{files:?}");
        let file = std::fs::read_to_string(&files[0]).unwrap();
        for (name, log) in [("stderr", &stderr), ("log file", &file)] {
            // The request path really was logged, and redacted.
            let path_line = log
                .lines()
                .find(|l| l.contains("Failed to deserialize Json"))
                .unwrap_or_else(|| panic!("{format} {name}: no extractor debug line:\n{log}"));
            assert!(
                path_line.contains("/api/v1/keys/[REDACTED:jwt]"),
                "{format} {name}: {path_line}"
            );
            assert!(log.contains("keybroker listening"), "{format} {name}");
            for secret in &secrets {
                assert!(
                    !log.contains(secret.as_str()),
                    "{format} {name}: a planted secret reached the log"
                );
            }
        }
    }
}

/// keybroker's own access-log fields are never taken for secrets: for every route of the table,
/// called without credentials through the real server, the line keeps its route and status.
#[tokio::test]
async fn every_route_of_the_table_keeps_its_own_status_in_the_access_log() {
    let app = TestApp::spawn().await;
    for route in keybroker::routes::API_ROUTES {
        let path: String = route
            .path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let method = match route.method {
            "ANY" => reqwest::Method::POST,
            m => reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
        };
        let res = app
            .client
            .request(method, app.url(&path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let _ = res.bytes().await;
        // Text (`route=… status=…`) or JSON (`"route":"…","status":…`) lines.
        let logged = |app: &TestApp| {
            app.logs().lines().any(|l| {
                (l.contains(&format!("route={} ", route.path))
                    && l.contains(&format!(" status={status} ")))
                    || (l.contains(&format!("\"route\":\"{}\"", route.path))
                        && l.contains(&format!("\"status\":{status},")))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !logged(&app) {
            assert!(
                Instant::now() < deadline,
                "{} {}: its status {status} is not in the log: {:?}",
                route.method,
                route.path,
                lines_with(&app, route.path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
