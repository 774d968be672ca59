//! HTTPS: real handshakes against the server (TLS 1.3 only, HSTS), the plain-HTTP redirect
//! listener, and certificate reload on SIGHUP in the real binary while a keep-alive connection
//! opened before the reload carries on.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybroker::http::tls::TlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use sha2::Digest;

use crate::cli;
use crate::helpers::TestApp;

pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// A test CA and the server certificates it issues (for `localhost` and `127.0.0.1`).
pub struct Pki {
    ca_der: CertificateDer<'static>,
    /// The CA certificate as a PEM file holds it (a client's root bundle).
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub sha256: String,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "keybroker test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn leaf(&self) -> Leaf {
        self.leaf_for(&["localhost", "127.0.0.1"])
    }

    /// A server certificate naming `names` (DNS names or IP addresses) only.
    pub fn leaf_for(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            sha256: hex::encode(sha2::Sha256::digest(cert.der())),
        }
    }

    /// A client that trusts only this CA and speaks only `versions`.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// reqwest trusting this CA, not following redirects.
    pub fn reqwest_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_der(&self.ca_der).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir`, each replaced in one rename.
    pub fn write(&self, dir: &Path) -> TlsSettings {
        let put = |name: &str, text: &str| -> PathBuf {
            let path = dir.join(name);
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        };
        TlsSettings {
            key_path: put("key.pem", &self.key_pem),
            cert_path: put("cert.pem", &self.cert_pem),
        }
    }
}

/// An HTTP/1.1 keep-alive connection over TLS, driven by hand so the test knows exactly which
/// connection each request uses.
pub struct Conn(StreamOwned<ClientConnection, TcpStream>);

pub struct Reply {
    pub status: u16,
    pub head: String,
}

pub fn tls_connect(port: u16, config: Arc<ClientConfig>) -> io::Result<Conn> {
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(Conn(StreamOwned::new(conn, sock)))
}

impl Conn {
    pub fn peer_sha256(&self) -> String {
        let certs = self.0.conn.peer_certificates().unwrap();
        hex::encode(sha2::Sha256::digest(certs[0].as_ref()))
    }

    pub fn protocol(&self) -> Option<rustls::ProtocolVersion> {
        self.0.conn.protocol_version()
    }

    /// One `GET` on this connection; reads the whole (Content-Length) response.
    pub fn get(&mut self, path: &str) -> io::Result<Reply> {
        write!(self.0, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        self.0.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body)?;
        Ok(Reply { status, head })
    }
}

/// A server with HTTPS (and a redirect listener); the certificate files live in `dir`.
async fn spawn_https(pki: &Pki, dir: &Path) -> (TestApp, Leaf) {
    let leaf = pki.leaf();
    let tls = leaf.write(dir);
    let app = TestApp::spawn_with(|s| {
        s.tls = Some(tls);
        s.redirect_http = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    (app, leaf)
}

#[tokio::test]
async fn a_tls13_client_completes_a_real_handshake_and_sees_hsts() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (app, leaf) = spawn_https(&pki, dir.path()).await;
    let config = pki.client_config(&[&rustls::version::TLS13]);
    let port = app.port;
    let (protocol, peer, reply) = tokio::task::spawn_blocking(move || {
        let mut conn = tls_connect(port, config).unwrap();
        let reply = conn.get("/healthz").unwrap();
        (conn.protocol(), conn.peer_sha256(), reply)
    })
    .await
    .unwrap();
    assert_eq!(protocol, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(peer, leaf.sha256);
    assert_eq!(reply.status, 200, "{}", reply.head);
    let hsts = format!("strict-transport-security: {HSTS}\r\n");
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains(&hsts.to_ascii_lowercase()),
        "{}",
        reply.head
    );

    // The same through an ordinary HTTPS client.
    let res = pki
        .reqwest_client()
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["strict-transport-security"], HSTS);
}

#[tokio::test]
async fn a_tls12_only_client_is_refused() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (app, _) = spawn_https(&pki, dir.path()).await;
    let config = pki.client_config(&[&rustls::version::TLS12]);
    let port = app.port;
    let result = tokio::task::spawn_blocking(move || tls_connect(port, config).map(|_| ()))
        .await
        .unwrap();
    let err = result.expect_err("a TLS 1.2 handshake must fail");
    assert!(
        err.to_string().to_ascii_lowercase().contains("protocol"),
        "{err}"
    );
    // Plain HTTP on the HTTPS port is not served either.
    let plain = app.client.get(app.url("/healthz")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn the_plain_listener_redirects_everything_to_the_same_path_and_query_over_https() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let (app, _) = spawn_https(&pki, dir.path()).await;
    let plain = format!("http://127.0.0.1:{}", app.redirect_port.unwrap());
    let cases = [
        (reqwest::Method::GET, "/dashboard/keys?sort=name&page=2"),
        (reqwest::Method::GET, "/healthz"),
        // No API on the plain listener: a login is redirected, not answered.
        (reqwest::Method::POST, "/api/v1/auth/login"),
        (reqwest::Method::GET, "/static/app.css"),
    ];
    for (method, path) in cases {
        let res = app
            .client
            .request(method.clone(), format!("{plain}{path}"))
            .header("x-request-id", "redirect-1")
            .body("{\"email\":\"a@example.com\",\"password\":\"hunter2hunter2\"}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 301, "{method} {path}");
        assert_eq!(
            res.headers()["location"],
            format!("https://127.0.0.1:{}{path}", app.port).as_str()
        );
        assert!(res.headers().get("strict-transport-security").is_none());
        assert_eq!(res.headers()["x-request-id"], "redirect-1");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        assert!(res.headers().get("set-cookie").is_none());
        assert!(res.text().await.unwrap().is_empty());
    }
    // The redirect leads somewhere real.
    let res = pki
        .reqwest_client()
        .get(format!("https://127.0.0.1:{}/healthz", app.port))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn the_redirect_prefers_an_https_public_url_over_the_host_header() {
    let (pki, dir) = (Pki::new(), tempfile::tempdir().unwrap());
    let tls = pki.leaf().write(dir.path());
    let app = TestApp::spawn_with(|s| {
        s.tls = Some(tls);
        s.redirect_http = Some(([127, 0, 0, 1], 0).into());
        s.public_url = Some("https://keys.example.com".to_owned());
    })
    .await;
    let res = app
        .client
        .get(format!(
            "http://127.0.0.1:{}/reset/confirm?x=1",
            app.redirect_port.unwrap()
        ))
        .header("host", "evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
    assert_eq!(
        res.headers()["location"],
        "https://keys.example.com/reset/confirm?x=1"
    );
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything the server wrote to its log files so far.
fn log_files(data: &Path) -> String {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(data.join("logs")) {
        for entry in entries.flatten() {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

#[test]
fn sighup_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = pki.leaf();
    let tls = first.write(dir.path());
    let (cert, key) = (
        tls.cert_path.display().to_string(),
        tls.key_path.display().to_string(),
    );
    let running = cli::serve(
        &data,
        &[("KEYBROKER_TLS_CERT", &cert), ("KEYBROKER_TLS_KEY", &key)],
    )
    .expect("serve starts with TLS");
    let pid = running.child.id().to_string();
    let config = pki.client_config(&[&rustls::version::TLS13]);

    let mut before = tls_connect(running.port, config.clone()).unwrap();
    assert_eq!(before.get("/healthz").unwrap().status, 200);
    assert_eq!(before.peer_sha256(), first.sha256);

    let second = pki.leaf();
    second.write(dir.path());
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    wait_for("the new certificate", || {
        tls_connect(running.port, config.clone())
            .unwrap()
            .peer_sha256()
            == second.sha256
    });
    // The connection opened before the reload still works, with the certificate it started with.
    let reply = before.get("/readyz").unwrap();
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(before.peer_sha256(), first.sha256);
    wait_for("the reload log line", || {
        log_files(&data).contains("TLS certificate reloaded")
    });

    // A reload that fails (a key that does not match the certificate) keeps the current one.
    let third = pki.leaf();
    std::fs::write(&tls.key_path, &third.key_pem).unwrap();
    hup();
    wait_for("the failed-reload log line", || {
        log_files(&data).contains("TLS certificate reload failed")
    });
    let mut after = tls_connect(running.port, config).unwrap();
    assert_eq!(after.peer_sha256(), second.sha256);
    assert_eq!(after.get("/healthz").unwrap().status, 200);
    let logs = log_files(&data);
    assert!(!logs.contains(third.key_pem.lines().nth(1).unwrap()));
    assert!(!logs.contains(second.key_pem.lines().nth(1).unwrap()));
    assert!(cli::stop(running).success(), "graceful exit on SIGTERM");
}

#[test]
fn serve_refuses_unusable_transport_options_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--redirect-http", "127.0.0.1:0"], "--tls-cert"),
        (&["--tls-cert", missing], "--tls-key"),
        (
            &["--trusted-proxy", "proxy.local"],
            "not an address or CIDR",
        ),
        (
            &["--tls-cert", missing, "--tls-key", missing],
            "missing.pem",
        ),
    ];
    for (args, expected) in cases {
        let out = cli::keybroker()
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", data])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
