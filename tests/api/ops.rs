//! Running keybroker as an operator does: secrets from files (`<VAR>_FILE`, as Docker secrets
//! arrive), one server per data directory, and the container's health check.

use std::os::unix::fs::PermissionsExt;

use crate::backup::kb;
use crate::cli::{serve, stop};
use crate::helpers::random_b64;
use crate::remote::ServerEnv;

/// The same secrets as files (one per variable, mode 0600), named by `<VAR>_FILE`.
fn as_files(env: &ServerEnv, dir: &std::path::Path) -> ServerEnv {
    let mut files = ServerEnv { vars: Vec::new() };
    for (name, value) in &env.vars {
        let path = dir.join(name.to_lowercase());
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        files = files.with(&format!("{name}_FILE"), path.to_str().unwrap());
    }
    files
}

#[test]
fn secrets_can_come_from_files_named_by_file_variables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = ServerEnv::random();
    let files = as_files(&env, dir.path());
    stop(serve(&data, &files.pairs()).expect("serve with *_FILE secrets"));
    // Nothing was generated: the files were used, and the same values given directly open it.
    assert!(!data.join("master.key").exists());
    let d = data.to_str().unwrap();
    let out = kb(&["check", "--data-dir", d], &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let out = kb(&["check", "--data-dir", d], &files);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);

    let both = files
        .clone()
        .with("KEYBROKER_MASTER_KEY", env.get("KEYBROKER_MASTER_KEY"));
    let out = kb(&["check", "--data-dir", d], &both);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("set either KEYBROKER_MASTER_KEY or KEYBROKER_MASTER_KEY_FILE"),
        "{}",
        out.stderr
    );
    let missing = files.with("KEYBROKER_MASTER_KEY_FILE", "/nonexistent/master_key");
    let out = kb(&["check", "--data-dir", d], &missing);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("KEYBROKER_MASTER_KEY_FILE=/nonexistent/master_key"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(env.get("KEYBROKER_MASTER_KEY")));
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = ServerEnv::random();
    let first = serve(&data, &env.pairs()).unwrap();
    let err = serve(&data, &env.pairs()).err().expect("refused");
    assert!(
        err.contains("a server is running on this data directory"),
        "{err}"
    );
    stop(first);
    stop(serve(&data, &env.pairs()).expect("free again once the first stopped"));
}

#[test]
fn healthcheck_succeeds_against_a_live_server_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let env = ServerEnv::random();
    let running = serve(&dir.path().join("data"), &env.pairs()).unwrap();
    let bind = format!("0.0.0.0:{}", running.port);
    let out = kb(&["healthcheck", "--bind", &bind], &env);
    assert!(out.ok, "{}", out.stderr);
    let url = format!("http://127.0.0.1:{}/nope", running.port);
    let out = kb(&["healthcheck", "--url", &url], &env);
    assert!(!out.ok && out.stderr.contains("404"), "{}", out.stderr);
    let port = running.port;
    stop(running);
    let out = kb(
        &[
            "healthcheck",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "2",
        ],
        &env.with("KEYBROKER_MASTER_KEY", &random_b64(32)),
    );
    assert!(!out.ok);
}

#[tokio::test]
async fn the_smtp_url_and_oauth_client_secrets_can_come_from_files() {
    let sink = crate::mail_support::SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let env = ServerEnv::random()
        .with("KEYBROKER_PUBLIC_URL", "http://127.0.0.1:9")
        .with("KEYBROKER_SMTP_URL_FILE", &file("smtp_url", &sink.url()))
        .with(
            "KEYBROKER_OAUTH_GITHUB_CLIENT_ID",
            "id-from-the-environment",
        )
        .with(
            "KEYBROKER_OAUTH_GITHUB_CLIENT_SECRET_FILE",
            &file("github_secret", "secret-from-a-file"),
        );
    let running = serve(&dir.path().join("data"), &env.pairs()).expect("serve");
    let base = format!("http://127.0.0.1:{}", running.port);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Mail goes out over SMTP, to the URL the file held.
    let email = "files@example.com";
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&serde_json::json!({"email": email, "password": "correct horse battery staple 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let res = client
        .post(format!("{base}/api/v1/auth/password-reset"))
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mail = sink.wait_for(1).await;
    assert!(mail[0].contains(email), "{}", mail[0]);

    // GitHub sign-in is configured: its client secret came from the file.
    let res = client
        .get(format!("{base}/auth/oauth/github/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"].to_str().unwrap();
    assert!(
        location.contains("client_id=id-from-the-environment"),
        "{location}"
    );
    stop(running);

    // Both forms at once is refused, naming the variable and never the value.
    let both = env.with(
        "KEYBROKER_SMTP_URL",
        "smtp://user:mail-password@127.0.0.1:1",
    );
    let err = serve(&dir.path().join("data"), &both.pairs())
        .err()
        .expect("refused");
    assert!(
        err.contains("set either KEYBROKER_SMTP_URL or KEYBROKER_SMTP_URL_FILE"),
        "{err}"
    );
    assert!(!err.contains("mail-password"), "{err}");
}
