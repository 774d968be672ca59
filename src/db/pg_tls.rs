//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert`, read out of the URL (tokio-postgres
//! knows neither the verifying modes nor root files, and refuses parameters it does not know),
//! and the one rustls connector every connection of an instance uses.
//!
//! | `sslmode`          | encrypted                    | certificate checked                 |
//! |--------------------|------------------------------|-------------------------------------|
//! | `disable`          | never                        | -                                   |
//! | `prefer` (default) | if the server offers TLS     | chain only when `sslrootcert` given |
//! | `require`          | always                       | chain only when `sslrootcert` given |
//! | `verify-ca`        | always                       | chain                               |
//! | `verify-full`      | always                       | chain and host name                 |
//!
//! The chain is checked against `sslrootcert` (a PEM bundle, read once at start), or Mozilla's
//! roots (`webpki-roots`) when it is not given or is `system`. libpq would read
//! `~/.postgresql/root.crt` instead; a managed service's CA (RDS, Cloud SQL) is given with
//! `sslrootcert`, one signed by a public CA (Neon) needs nothing.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, the five values keybroker honours (`allow`, plain first and TLS second,
/// is not one: tokio-postgres cannot do it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the CA certificates that sign the server's certificate come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// No `sslrootcert`: Mozilla's roots, used only by the verifying modes.
    Default,
    /// `sslrootcert=system`: Mozilla's roots, and libpq's rule that only `verify-full` may use them.
    System,
    /// `sslrootcert=/path/ca.pem`.
    File(PathBuf),
}

/// What the URL's `sslmode` and `sslrootcert` ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub roots: Roots,
}

/// How much of the server's certificate a connection checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Encrypted, but anyone may answer (libpq's `prefer`/`require` without a root file).
    Nothing,
    /// Signed by a trusted CA, whatever host it names.
    Chain,
    /// Signed by a trusted CA and naming the host connected to.
    ChainAndName,
}

/// libpq's client-certificate and revocation parameters: refused by name, since rustls here has
/// neither, rather than as tokio-postgres's "unknown option".
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// `raw` without its `sslmode` and `sslrootcert` parameters (the rest verbatim, for
/// `postgres::Config`), and what they said. Errors name the parameter, never its value or the URL.
pub(super) fn split_url(raw: &str, name: &str) -> Result<(String, TlsOptions), String> {
    let (base, query) = split_query(raw);
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for piece in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        let (key, value) = (decode(key), decode(value));
        match key.as_str() {
            "sslmode" => {
                mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "{name}: sslmode must be one of disable, prefer, require, verify-ca, \
                         verify-full"
                    )
                })?);
            }
            "sslrootcert" => {
                if value.is_empty() {
                    return Err(format!(
                        "{name}: sslrootcert needs a file (a PEM CA bundle)"
                    ));
                }
                root = Some(value);
            }
            k if UNSUPPORTED.contains(&k) => {
                return Err(format!(
                    "{name}: {k} is not supported (no client certificates or CRLs)"
                ));
            }
            _ => kept.push(piece),
        }
    }
    let roots = match root {
        None => Roots::Default,
        Some(r) if r == "system" => Roots::System,
        Some(r) => Roots::File(PathBuf::from(r)),
    };
    let mode = match (mode, &roots) {
        // libpq: the system's roots are only worth something with the host name checked.
        (None, Roots::System) => SslMode::VerifyFull,
        (Some(m), Roots::System) if m != SslMode::VerifyFull => {
            return Err(format!(
                "{name}: sslrootcert=system needs sslmode=verify-full"
            ))
        }
        (m, _) => m.unwrap_or(SslMode::Prefer),
    };
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, TlsOptions { mode, roots }))
}

/// Where the query starts as tokio-postgres reads a URL: the first `?` after the credentials
/// (everything before the first `@`), so a `?` in a password is not taken for it.
fn split_query(raw: &str) -> (&str, Option<&str>) {
    let after_credentials = raw.find('@').map_or(0, |at| at + 1);
    match raw[after_credentials..].find('?') {
        Some(q) => {
            let at = after_credentials + q;
            (&raw[..at], Some(&raw[at + 1..]))
        }
        None => (raw, None),
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl TlsOptions {
    /// What `postgres::Config` is told: the verifying modes are `require` to it, and the
    /// connector checks the rest.
    pub(super) fn tokio_mode(&self) -> postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }

    fn check(&self) -> Check {
        match (self.mode, &self.roots) {
            (SslMode::VerifyFull, _) | (_, Roots::System) => Check::ChainAndName,
            (SslMode::VerifyCa, _) => Check::Chain,
            // libpq: a root file given is a root file used, in require (and prefer) too.
            (_, Roots::File(_)) => Check::Chain,
            (_, Roots::Default) => Check::Nothing,
        }
    }

    /// The connector for these options; reads `sslrootcert`, so a missing or empty file is an
    /// error at start. The path is named in errors (it is not secret), the URL never.
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        let algorithms = provider.signature_verification_algorithms;
        let relaxed = |roots| Arc::new(danger::Relaxed { roots, algorithms });
        let config = match self.check() {
            Check::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(relaxed(None))
                .with_no_client_auth(),
            Check::Chain => builder
                .dangerous()
                .with_custom_certificate_verifier(relaxed(Some(Arc::new(self.root_store()?))))
                .with_no_client_auth(),
            Check::ChainAndName => builder
                .with_root_certificates(self.root_store()?)
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn root_store(&self) -> Result<RootCertStore, String> {
        let Roots::File(path) = &self.roots else {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read sslrootcert {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("sslrootcert {shown} is not a PEM certificate bundle: {e}"))?;
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "sslrootcert {shown} holds no CA certificate keybroker can use"
            ));
        }
        Ok(store)
    }

    /// Where the trusted CAs came from, for messages.
    fn roots_named(&self) -> &'static str {
        match self.roots {
            Roots::File(_) => "sslrootcert",
            Roots::Default | Roots::System => {
                "Mozilla's roots; give the server's CA with sslrootcert"
            }
        }
    }

    /// A TLS failure in `e`, said in operator terms; `None` when `e` is not one.
    pub(super) fn explain(&self, e: &postgres::Error) -> Option<String> {
        if let Some(tls) = find_rustls(e) {
            return Some(self.explain_rustls(tls));
        }
        // tokio-postgres's own words (in the cause) when the server answered the SSLRequest 'N'.
        let cause = std::error::Error::source(e)?.to_string();
        cause.contains("server does not support TLS").then(|| {
            "the server does not accept TLS connections (sslmode=require or stricter needs it)"
                .to_owned()
        })
    }

    fn explain_rustls(&self, e: &rustls::Error) -> String {
        let rustls::Error::InvalidCertificate(cert) = e else {
            return match e {
                rustls::Error::AlertReceived(alert) => {
                    format!("the server refused the TLS handshake ({alert:?})")
                }
                other => format!("the TLS handshake failed ({other})"),
            };
        };
        match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not trusted ({})",
                self.roots_named()
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host in the URL (sslmode=verify-full)"
                    .to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".to_owned()
            }
            other => format!("the server's certificate was refused ({other:?})"),
        }
    }
}

/// The rustls error inside a connection error: tokio-postgres boxes tokio-rustls's `io::Error`,
/// which wraps it (and `io::Error::source` skips the error it wraps, so it is looked into).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if wrapped.is_some() {
            return wrapped;
        }
        current = err.source();
    }
    None
}

/// The verifier for the modes that check less than rustls's default. It still verifies the
/// handshake's signatures with the certificate's key, so the peer holds the key of what it
/// presented.
mod danger {
    use super::*;

    /// `roots: None`: libpq's `prefer`/`require` with no root file. The connection is encrypted
    /// against a passive listener and any certificate is taken (an active attacker can answer in
    /// the server's place; `verify-full` is what stops that).
    ///
    /// `roots: Some(..)`: libpq's `verify-ca`. The chain must lead to a trusted root and be valid
    /// now (the same check rustls's default verifier makes first); the host name is not compared.
    #[derive(Debug)]
    pub(super) struct Relaxed {
        pub(super) roots: Option<Arc<RootCertStore>>,
        pub(super) algorithms: WebPkiSupportedAlgorithms,
    }

    impl ServerCertVerifier for Relaxed {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if let Some(roots) = &self.roots {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    roots,
                    intermediates,
                    now,
                    self.algorithms.all,
                )?;
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(raw: &str) -> Result<(String, TlsOptions), String> {
        split_url(raw, "KEYBROKER_DATABASE_URL")
    }

    fn opts(mode: SslMode, roots: Roots) -> TlsOptions {
        TlsOptions { mode, roots }
    }

    #[test]
    fn without_sslmode_the_default_is_prefer_and_the_url_is_untouched() {
        let (url, tls) = split("postgres://kb:pw@db:5432/kb").unwrap();
        assert_eq!(url, "postgres://kb:pw@db:5432/kb");
        assert_eq!(tls, opts(SslMode::Prefer, Roots::Default));
        assert_eq!(tls.check(), Check::Nothing);
    }

    #[test]
    fn every_libpq_mode_is_read_and_taken_out_of_the_url() {
        for (value, mode, tokio) in [
            (
                "disable",
                SslMode::Disable,
                postgres::config::SslMode::Disable,
            ),
            ("prefer", SslMode::Prefer, postgres::config::SslMode::Prefer),
            (
                "require",
                SslMode::Require,
                postgres::config::SslMode::Require,
            ),
            (
                "verify-ca",
                SslMode::VerifyCa,
                postgres::config::SslMode::Require,
            ),
            (
                "verify-full",
                SslMode::VerifyFull,
                postgres::config::SslMode::Require,
            ),
        ] {
            let (url, tls) = split(&format!("postgres://db/kb?sslmode={value}")).unwrap();
            assert_eq!(url, "postgres://db/kb", "{value}");
            assert_eq!(tls.mode, mode);
            assert_eq!(tls.tokio_mode(), tokio);
        }
    }

    #[test]
    fn sslrootcert_is_taken_out_and_other_parameters_are_kept_verbatim() {
        let (url, tls) = split(
            "postgres://kb:p%3Fw@db/kb?application_name=a%20b&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fkb%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://kb:p%3Fw@db/kb?application_name=a%20b&connect_timeout=3"
        );
        assert_eq!(
            tls,
            opts(SslMode::VerifyFull, Roots::File("/etc/kb/ca.pem".into()))
        );
        assert!(url.parse::<postgres::Config>().is_ok());
    }

    #[test]
    fn a_question_mark_in_the_password_does_not_start_the_query() {
        let (url, tls) = split("postgres://kb:a?b@db/kb?sslmode=require").unwrap();
        assert_eq!(url, "postgres://kb:a?b@db/kb");
        assert_eq!(tls.mode, SslMode::Require);
    }

    #[test]
    fn an_unknown_sslmode_is_refused_without_its_value() {
        let err = split("postgres://db/kb?sslmode=allow-s3cret").unwrap_err();
        assert_eq!(
            err,
            "KEYBROKER_DATABASE_URL: sslmode must be one of disable, prefer, require, verify-ca, \
             verify-full"
        );
        assert!(split("postgres://db/kb?sslmode=VERIFY-FULL").is_err());
        assert!(split("postgres://db/kb?sslmode=").is_err());
    }

    #[test]
    fn client_certificates_are_refused_by_name() {
        let err = split("postgres://db/kb?sslcert=/c.pem").unwrap_err();
        assert!(err.contains("sslcert is not supported"), "{err}");
        assert!(split("postgres://db/kb?sslrootcert=").is_err());
    }

    #[test]
    fn a_root_file_makes_require_and_prefer_check_the_chain_as_libpq_does() {
        let file = || Roots::File("/ca.pem".into());
        assert_eq!(opts(SslMode::Require, file()).check(), Check::Chain);
        assert_eq!(opts(SslMode::Prefer, file()).check(), Check::Chain);
        assert_eq!(
            opts(SslMode::Require, Roots::Default).check(),
            Check::Nothing
        );
        assert_eq!(
            opts(SslMode::VerifyCa, Roots::Default).check(),
            Check::Chain
        );
        assert_eq!(opts(SslMode::VerifyCa, file()).check(), Check::Chain);
        assert_eq!(
            opts(SslMode::VerifyFull, Roots::Default).check(),
            Check::ChainAndName
        );
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_weaker_modes() {
        let (_, tls) = split("postgres://db/kb?sslrootcert=system").unwrap();
        assert_eq!(tls, opts(SslMode::VerifyFull, Roots::System));
        let err = split("postgres://db/kb?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(err.contains("needs sslmode=verify-full"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_root_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = opts(SslMode::VerifyFull, Roots::File(missing.clone()))
            .connector()
            .err()
            .unwrap();
        assert!(err.contains("cannot read sslrootcert"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = opts(SslMode::VerifyCa, Roots::File(empty))
            .connector()
            .err()
            .unwrap();
        assert!(err.contains("holds no CA certificate"), "{err}");
    }

    #[test]
    fn every_check_builds_a_connector_with_the_default_roots() {
        for mode in [
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert!(opts(mode, Roots::Default).connector().is_ok(), "{mode:?}");
        }
    }

    #[test]
    fn certificate_failures_are_said_in_operator_terms() {
        let file = opts(SslMode::VerifyFull, Roots::File("/ca.pem".into()));
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            file.explain_rustls(&unknown),
            "the server's certificate is not trusted (sslrootcert)"
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(file
            .explain_rustls(&name)
            .contains("does not name the host"));
        // Found inside the io::Error tokio-rustls wraps it in.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown.clone());
        assert_eq!(find_rustls(&io), Some(&unknown));
    }
}
