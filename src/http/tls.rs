//! HTTPS: the rustls server configuration (TLS 1.3 only, the ring provider), a certificate store
//! that re-reads the PEM files on SIGHUP and hands the new certificate to new handshakes while
//! open connections carry on, and the plain-HTTP listener whose only answer is a 301 to HTTPS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// `Strict-Transport-Security` on every HTTPS response: a year, subdomains included.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Where the certificate chain and its private key are (`--tls-cert`, `--tls-key`).
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Why a certificate could not be loaded. Says which file and what is wrong with it, never
/// anything read from it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS certificate and key do not go together: {0}")]
    Pair(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_reason(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(io) => io.to_string(),
        pem::Error::NoItemsFound => format!("no {what} in PEM form found"),
        // The other variants quote the offending line; say only that the file is not PEM.
        _ => "not a well-formed PEM file".to_owned(),
    }
}

/// The certificate handed to every new handshake, replaceable while the server runs.
pub struct CertStore {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.settings.cert_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl CertStore {
    /// Reads both files; refuses to start on any problem.
    pub fn load(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(&settings, &provider)?;
        Ok(Arc::new(Self {
            settings,
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads both files and, when they make a valid pair, serves them from the next handshake
    /// on. On any problem the current certificate stays. Returns the new leaf's fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let key = read_pair(&self.settings, &self.provider)?;
        let fingerprint = fingerprint(&key);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(fingerprint)
    }

    /// SHA-256 of the leaf certificate being served, hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current())
    }

    /// A TLS 1.3-only server configuration that takes its certificate from this store.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        Ok(ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }
}

fn fingerprint(key: &CertifiedKey) -> String {
    key.cert
        .first()
        .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
        .unwrap_or_default()
}

fn read_pair(settings: &TlsSettings, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason| TlsError::Cert {
        path: settings.cert_path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&settings.cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_err(pem_reason(&e, "certificate")))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in PEM form found".to_owned()));
    }
    let key = read_key(&settings.key_path)?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Pair(e.to_string()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: pem_reason(&e, "private key"),
    })
}

/// Reloads the certificate on every SIGHUP until aborted. A failed reload is logged (through the
/// redactor, like every line) and the old certificate kept.
pub fn reload_on_sighup(store: Arc<CertStore>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.reload()).await {
                Ok(Ok(fingerprint)) => {
                    tracing::info!(sha256 = %fingerprint, "TLS certificate reloaded");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS certificate reload failed; still serving the previous certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate reload did not finish; still serving the previous certificate");
                }
            }
        }
    }))
}

/// Where the plain-HTTP listener sends everyone.
#[derive(Clone, Debug)]
pub struct RedirectTarget {
    /// `https://host[:port]` from `KEYBROKER_PUBLIC_URL`, when that is an HTTPS URL.
    pub public_origin: Option<String>,
    /// The HTTPS listener's port, used with the request's own host otherwise.
    pub https_port: u16,
}

impl RedirectTarget {
    pub fn new(public_url: Option<&str>, https_port: u16) -> Self {
        let public_origin = public_url
            .and_then(|u| {
                let (scheme, rest) = u.split_once("://")?;
                scheme.eq_ignore_ascii_case("https").then_some(rest)
            })
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .filter(|host| !host.is_empty())
            .map(|host| format!("https://{host}"));
        Self {
            public_origin,
            https_port,
        }
    }

    /// `https://host[:port]` for this request; `None` when it names no usable host.
    fn origin(&self, req: &HttpRequest) -> Option<String> {
        if let Some(origin) = &self.public_origin {
            return Some(origin.clone());
        }
        let authority: actix_web::http::uri::Authority = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())?
            .parse()
            .ok()?;
        let host = authority.host();
        if host.is_empty() || authority.as_str().contains('@') {
            return None;
        }
        Some(match self.https_port {
            443 => format!("https://{host}"),
            port => format!("https://{host}:{port}"),
        })
    }
}

/// The plain-HTTP listener: one worker, one handler (the 301), no API and no pages. It still
/// stamps request ids, logs each request and sets the security headers (never HSTS: not HTTPS).
pub fn redirect_server(
    listener: std::net::TcpListener,
    target: RedirectTarget,
) -> std::io::Result<actix_web::dev::Server> {
    use crate::http::{access_log, client_addr, every_response, request_id};
    use actix_web::middleware::from_fn;
    let target = web::Data::new(target);
    Ok(actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(target.clone())
            .wrap(from_fn(every_response::middleware))
            .wrap(from_fn(access_log::middleware))
            .wrap(from_fn(client_addr::middleware))
            .wrap(from_fn(request_id::middleware))
            .default_service(web::to(redirect))
    })
    .workers(1)
    .listen(listener)?
    .shutdown_timeout(5)
    .run())
}

/// The plain-HTTP listener's only handler: 301 to the same path and query over HTTPS.
pub async fn redirect(
    req: HttpRequest,
    target: web::Data<RedirectTarget>,
) -> Result<HttpResponse, ApiError> {
    let origin = target.origin(&req).ok_or_else(|| {
        ApiError::bad_request(
            "bad_host",
            "the Host header does not name a host; use HTTPS",
        )
    })?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("{origin}{path}")).map_err(|_| {
        ApiError::bad_request("bad_host", "the request cannot be redirected; use HTTPS")
    })?;
    Ok(HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, location))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_https_public_url_sets_the_redirect_origin() {
        let origin = |u| RedirectTarget::new(Some(u), 8443).public_origin;
        assert_eq!(
            origin("https://keys.example.com/base"),
            Some("https://keys.example.com".to_owned())
        );
        assert_eq!(
            origin("HTTPS://keys.example.com:8443"),
            Some("https://keys.example.com:8443".to_owned())
        );
        assert_eq!(origin("http://keys.example.com"), None);
        assert_eq!(origin("https://"), None);
        assert_eq!(RedirectTarget::new(None, 8443).public_origin, None);
    }

    #[test]
    fn a_missing_or_broken_file_is_refused_without_quoting_it() {
        let dir = std::env::temp_dir().join(format!("kb-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).ok();
        let cert = dir.join("cert.pem");
        let secretish = "-----BEGIN CERTIFICATE sk-live-0123456789abcdef-----\n";
        std::fs::write(&cert, secretish).ok();
        let settings = TlsSettings {
            cert_path: cert,
            key_path: dir.join("missing.pem"),
        };
        let err = CertStore::load(settings).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("cert.pem"), "{err}");
        assert!(!err.contains("sk-live"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
