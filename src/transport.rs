//! The `serve` command's transport options: HTTPS (`--tls-cert`, `--tls-key`), the plain-HTTP
//! redirect listener (`--redirect-http`) and the reverse proxies whose forwarding headers are
//! believed (`--trusted-proxy`). Kept apart from `cli` so the command line stays a list.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;
use ipnet::IpNet;

use crate::config::Settings;
use crate::http::tls::TlsSettings;

#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Serve HTTPS (TLS 1.3 only) with this PEM certificate chain; re-read on SIGHUP.
    #[arg(
        long,
        env = "KEYBROKER_TLS_CERT",
        requires = "tls_key",
        value_name = "PATH"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert; re-read on SIGHUP.
    #[arg(
        long,
        env = "KEYBROKER_TLS_KEY",
        requires = "tls_cert",
        value_name = "PATH"
    )]
    tls_key: Option<PathBuf>,
    /// Also listen for plain HTTP here and answer every request with a 301 to HTTPS.
    #[arg(
        long,
        env = "KEYBROKER_REDIRECT_HTTP",
        requires = "tls_cert",
        value_name = "ADDR"
    )]
    redirect_http: Option<SocketAddr>,
    /// Believe X-Forwarded-For / X-Forwarded-Proto from peers in this network (repeatable; the
    /// variable takes a comma-separated list). A bare address means just that address.
    #[arg(
        long = "trusted-proxy",
        env = "KEYBROKER_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR",
        value_parser = parse_cidr
    )]
    trusted_proxies: Vec<IpNet>,
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR (e.g. 10.0.0.0/8)"))
}

impl TransportArgs {
    pub fn apply(self, settings: &mut Settings) {
        settings.tls = self
            .tls_cert
            .zip(self.tls_key)
            .map(|(cert_path, key_path)| TlsSettings {
                cert_path,
                key_path,
            });
        settings.redirect_http = self.redirect_http;
        settings.trusted_proxies = self.trusted_proxies;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            parse_cidr(" 127.0.0.1 ").map(|n| n.to_string()),
            Ok("127.0.0.1/32".into())
        );
        assert_eq!(
            parse_cidr("::1").map(|n| n.to_string()),
            Ok("::1/128".into())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("proxy.local").is_err());
    }
}
