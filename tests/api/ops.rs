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
