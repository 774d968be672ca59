//! TLS to PostgreSQL: `keybroker serve` against a cluster of its own that accepts encrypted TCP
//! connections only (`hostssl`), with a certificate from a test CA, under each `sslmode`.

use std::path::Path;

use crate::cli::{http_get, keybroker, serve};
use crate::pg_cluster::{PgCluster, ServerTls};
use crate::scale_out::shared_secrets;
use crate::tls::{Leaf, Pki};

/// Ignored by the server (the superuser is trusted), so it shows whether a password leaks.
const PASSWORD: &str = "tls-s3cret-pw";

fn server_tls(leaf: &Leaf) -> ServerTls<'_> {
    ServerTls {
        cert_pem: &leaf.cert_pem,
        key_pem: &leaf.key_pem,
    }
}

fn url(cluster: &PgCluster, host: &str, db: &str, params: &str) -> String {
    url_as(cluster, "postgres", PASSWORD, host, db, params)
}

fn url_as(
    cluster: &PgCluster,
    user: &str,
    password: &str,
    host: &str,
    db: &str,
    params: &str,
) -> String {
    let port = cluster.port();
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{params}")
    };
    format!("postgres://{user}:{password}@{host}:{port}/{db}{query}")
}

fn env<'a>(secrets: &'a [(&'static str, String)], url: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut env: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("KEYBROKER_DATABASE_URL", url));
    env
}

/// `serve` comes up on `url` and answers `/readyz` (which asks the database).
fn serves(url: &str, secrets: &[(&'static str, String)]) -> crate::cli::Running {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(&dir.path().join("data"), &env(secrets, url))
        .unwrap_or_else(|stderr| panic!("{url}: did not start:\n{stderr}"));
    let (status, body) = http_get(running.port, "/readyz");
    assert_eq!(status, 200, "{url}: {body}");
    running
}

/// `serve` on `url` exits non-zero; its stderr, checked for the password.
fn refused(url: &str, secrets: &[(&'static str, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = keybroker()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .envs(env(secrets, url))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{url} started: {stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the password was printed: {stderr}"
    );
    stderr
}

fn write_ca(dir: &Path, name: &str, pki: &Pki) -> String {
    let path = dir.join(name);
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path.display().to_string()
}

/// keybroker's own connections to `db` (it names itself `keybroker`) as the server sees them,
/// once there are at least `at_least` (the pool's and the listener's open in the background):
/// (how many, how many encrypted).
fn keybroker_connections(cluster: &PgCluster, db: &str, at_least: u32) -> (u32, u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = cluster.psql(
            db,
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'keybroker' AND a.datname = current_database()
               AND a.pid <> pg_backend_pid()",
        );
        let (all, encrypted) = out.trim().split_once('|').unwrap();
        let (all, encrypted) = (all.parse().unwrap(), encrypted.parse().unwrap());
        if all >= at_least || std::time::Instant::now() > deadline {
            return (all, encrypted);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn each_sslmode_against_a_tls_only_server_does_what_libpq_does() {
    let (pki, other_ca) = (Pki::new(), Pki::new());
    let leaf = pki.leaf();
    let cluster = PgCluster::start_tls(&server_tls(&leaf));
    let db = cluster.create_database_named();
    let files = tempfile::tempdir().unwrap();
    let ca = write_ca(files.path(), "ca.pem", &pki);
    let wrong_ca = write_ca(files.path(), "other-ca.pem", &other_ca);
    let secrets = shared_secrets();

    // verify-full: the chain and the host name (the certificate names localhost); every
    // connection keybroker holds is encrypted, the pool's and the listener's.
    let verified = url(
        &cluster,
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let running = serves(&verified, &secrets);
    let (all, encrypted) = keybroker_connections(&cluster, &db, 2);
    assert!(all >= 2, "pool and listener: {all}");
    assert_eq!(encrypted, all, "{encrypted} of {all} connections encrypted");
    drop(running);

    // A role that must give its password (scram-sha-256, channel-bound to the TLS connection
    // when the server offers SCRAM-SHA-256-PLUS).
    cluster.create_user("kb_tls", "tls-role-pw-789");
    let owned = cluster.create_database_owned_by("kb_tls", "tls-role-pw-789");
    let owned_db = owned.rsplit('/').next().unwrap();
    let params = format!("sslmode=verify-full&sslrootcert={ca}");
    let as_role = url_as(
        &cluster,
        "kb_tls",
        "tls-role-pw-789",
        "localhost",
        owned_db,
        &params,
    );
    drop(serves(&as_role, &secrets));

    // Another CA: refused at start with one line saying why, naming neither URL nor password.
    let stderr = refused(
        &url(
            &cluster,
            "localhost",
            &db,
            &format!("sslmode=verify-full&sslrootcert={wrong_ca}"),
        ),
        &secrets,
    );
    assert!(
        stderr.contains("the server's certificate is not trusted (sslrootcert)"),
        "{stderr}"
    );

    // require without a root file: encrypted, any certificate taken. prefer (the default) uses
    // TLS when the server offers it, so it works against a TLS-only server too.
    drop(serves(
        &url(&cluster, "127.0.0.1", &db, "sslmode=require"),
        &secrets,
    ));
    drop(serves(&url(&cluster, "127.0.0.1", &db, ""), &secrets));

    // disable: the server's hostssl-only pg_hba refuses the plain connection.
    let stderr = refused(
        &url(&cluster, "127.0.0.1", &db, "sslmode=disable"),
        &secrets,
    );
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(stderr.contains("no encryption"), "{stderr}");

    // A certificate from the right CA for another host: verify-full refuses it, verify-ca (the
    // chain only) and require with the root file (libpq: then the same as verify-ca) take it.
    let elsewhere = pki.leaf_for(&["db.elsewhere.example"]);
    cluster.set_server_cert(&server_tls(&elsewhere));
    let stderr = refused(&verified, &secrets);
    assert!(
        stderr.contains("the server's certificate does not name the host in the URL"),
        "{stderr}"
    );
    for mode in ["verify-ca", "require"] {
        let params = format!("sslmode={mode}&sslrootcert={ca}");
        drop(serves(&url(&cluster, "localhost", &db, &params), &secrets));
    }
    // ... and with the other CA's file, require checks the chain and refuses.
    let params = format!("sslmode=require&sslrootcert={wrong_ca}");
    let stderr = refused(&url(&cluster, "localhost", &db, &params), &secrets);
    assert!(stderr.contains("not trusted (sslrootcert)"), "{stderr}");
}

/// A plain server: `require` is refused in words, `prefer` falls back to plain.
#[test]
fn require_against_a_server_without_tls_is_refused_and_prefer_falls_back() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database_named();
    let secrets = shared_secrets();
    let stderr = refused(&url(cluster, "127.0.0.1", &db, "sslmode=require"), &secrets);
    assert!(
        stderr.contains("the server does not accept TLS connections"),
        "{stderr}"
    );
    let running = serves(&url(cluster, "127.0.0.1", &db, "sslmode=prefer"), &secrets);
    let (all, encrypted) = keybroker_connections(cluster, &db, 1);
    assert!(all >= 1);
    assert_eq!(encrypted, 0);
    drop(running);
}

/// An sslmode keybroker does not know: one clear line before anything is connected.
#[test]
fn an_unknown_sslmode_or_a_missing_root_file_is_one_clear_line() {
    let secrets = shared_secrets();
    let stderr = refused(
        "postgres://kb:tls-s3cret-pw@127.0.0.1:1/kb?sslmode=allow",
        &secrets,
    );
    assert!(
        stderr.contains("sslmode must be one of disable, prefer, require, verify-ca, verify-full"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("sslmode")).count(),
        1,
        "{stderr}"
    );
    let stderr = refused(
        "postgres://kb:tls-s3cret-pw@127.0.0.1:1/kb?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        &secrets,
    );
    assert!(
        stderr.contains("cannot read sslrootcert /nonexistent/ca.pem"),
        "{stderr}"
    );
}
