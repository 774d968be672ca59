//! What an operator configures for the outside world to find and watch keybroker: the
//! `security.txt` contents (RFC 9116) and the optional separate `/metrics` listener. The `serve`
//! flags live here so `cli` only flattens them in.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{ConfigError, Settings};
use crate::startup::{AppState, StartError};

/// `serve` flags for discovery and metrics.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Security contact for /.well-known/security.txt: a mailto: or https: URI. Repeat the flag or
    /// separate with commas. Without one, security.txt answers 404.
    #[arg(
        long = "security-contact",
        env = "KEYBROKER_SECURITY_CONTACT",
        value_delimiter = ','
    )]
    security_contact: Vec<String>,
    /// https: URL of the vulnerability disclosure policy (security.txt `Policy`).
    #[arg(long, env = "KEYBROKER_SECURITY_POLICY")]
    security_policy: Option<String>,
    /// Languages reports may be written in (security.txt `Preferred-Languages`), comma-separated.
    #[arg(
        long,
        env = "KEYBROKER_SECURITY_LANGUAGES",
        value_delimiter = ',',
        default_value = "en"
    )]
    security_languages: Vec<String>,
    /// security.txt `Expires` is this many days after each request (1 to 365).
    #[arg(long, env = "KEYBROKER_SECURITY_EXPIRES_DAYS", default_value_t = DEFAULT_EXPIRES_DAYS,
          value_parser = clap::value_parser!(u16).range(1..=365))]
    security_expires_days: u16,
    /// Serve /metrics on this address instead of the main listener (which then answers 404 for it).
    #[arg(long, env = "KEYBROKER_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
}

impl OpsArgs {
    pub fn apply(self, settings: &mut Settings) -> Result<(), ConfigError> {
        settings.security_txt = SecurityTxt::new(
            self.security_contact,
            self.security_policy,
            self.security_languages,
            self.security_expires_days,
        )?;
        settings.metrics_bind = self.metrics_bind;
        Ok(())
    }
}

pub const DEFAULT_EXPIRES_DAYS: u16 = 180;

/// The checked contents of `/.well-known/security.txt`.
#[derive(Debug, Clone)]
pub struct SecurityTxt {
    contacts: Vec<String>,
    policy: Option<String>,
    languages: Vec<String>,
    expires_days: u16,
}

impl Default for SecurityTxt {
    fn default() -> Self {
        Self {
            contacts: Vec::new(),
            policy: None,
            languages: vec!["en".to_owned()],
            expires_days: DEFAULT_EXPIRES_DAYS,
        }
    }
}

/// A value safe to put on a security.txt line: no whitespace or control characters (a newline
/// would forge a field).
fn plain(v: &str) -> bool {
    !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl SecurityTxt {
    /// Checks every value: contacts are `mailto:` addresses or `https://` URLs, the policy an
    /// `https://` URL, languages RFC 5646-shaped tags. Empty list items are skipped.
    pub fn new(
        contacts: Vec<String>,
        policy: Option<String>,
        languages: Vec<String>,
        expires_days: u16,
    ) -> Result<Self, ConfigError> {
        let invalid = |what: &str, v: &str| {
            ConfigError::Invalid(format!(
                "{what} {v:?}: expected {}",
                if what == "KEYBROKER_SECURITY_LANGUAGES" {
                    "language tags like en or de-CH"
                } else if what == "KEYBROKER_SECURITY_POLICY" {
                    "an https:// URL"
                } else {
                    "a mailto: address or an https:// URL"
                }
            ))
        };
        let contacts = contacts
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(|c| {
                let ok = plain(c)
                    && (c
                        .strip_prefix("mailto:")
                        .is_some_and(email_address::EmailAddress::is_valid)
                        || https_url(c));
                if ok {
                    Ok(c.to_owned())
                } else {
                    Err(invalid("KEYBROKER_SECURITY_CONTACT", c))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let policy = match policy.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) if plain(p) && https_url(p) => Some(p.to_owned()),
            Some(p) => return Err(invalid("KEYBROKER_SECURITY_POLICY", p)),
            None => None,
        };
        let languages = languages
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .map(|l| {
                let ok = l.len() <= 35
                    && l.split('-').all(|part| {
                        (1..=8).contains(&part.len())
                            && part.bytes().all(|b| b.is_ascii_alphanumeric())
                    });
                if ok {
                    Ok(l.to_owned())
                } else {
                    Err(invalid("KEYBROKER_SECURITY_LANGUAGES", l))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            contacts,
            policy,
            languages,
            expires_days: expires_days.clamp(1, 365),
        })
    }

    /// The file as served at `now`, or `None` when no contact is configured (RFC 9116 requires
    /// one; an invented address could send reports nowhere, so we serve nothing rather than
    /// guess). `Canonical` is added when the public URL is `https://`.
    pub fn render(&self, now: OffsetDateTime, public_url: Option<&str>) -> Option<String> {
        if self.contacts.is_empty() {
            return None;
        }
        let mut out = String::new();
        for c in &self.contacts {
            out.push_str(&format!("Contact: {c}\n"));
        }
        let expires = (now + time::Duration::days(i64::from(self.expires_days)))
            .replace_nanosecond(0)
            .unwrap_or(now)
            .format(&Rfc3339)
            .ok()?;
        out.push_str(&format!("Expires: {expires}\n"));
        if let Some(p) = &self.policy {
            out.push_str(&format!("Policy: {p}\n"));
        }
        if !self.languages.is_empty() {
            out.push_str(&format!(
                "Preferred-Languages: {}\n",
                self.languages.join(", ")
            ));
        }
        if let Some(base) = public_url.filter(|u| https_url(u) && plain(u)) {
            out.push_str(&format!("Canonical: {base}/.well-known/security.txt\n"));
        }
        Some(out)
    }
}

fn https_url(v: &str) -> bool {
    v.strip_prefix("https://")
        .is_some_and(|rest| rest.split('/').next().is_some_and(|host| !host.is_empty()))
}

/// The separate metrics listener: `/metrics` only, anything else a JSON 404. One worker: a
/// scrape every few seconds needs no more.
pub fn metrics_server(
    addr: SocketAddr,
    state: web::Data<AppState>,
) -> Result<(Server, u16), StartError> {
    let bind_err = |source| StartError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_err)?;
    let port = listener.local_addr().map_err(bind_err)?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(crate::http::request_id::middleware))
            .route("/metrics", web::get().to(crate::routes::health::scrape))
            .default_service(web::to(crate::routes::not_found))
    })
    .workers(1)
    .listen(listener)
    .map_err(bind_err)?
    .shutdown_timeout(5)
    .run();
    Ok((server, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn txt(contacts: &[&str]) -> Result<SecurityTxt, ConfigError> {
        SecurityTxt::new(
            contacts.iter().map(|s| (*s).to_owned()).collect(),
            Some("https://example.com/security-policy".into()),
            vec!["en".into(), "de".into()],
            180,
        )
    }

    #[test]
    fn renders_the_required_fields_with_expires_from_now() {
        let t = txt(&["mailto:security@example.com", "https://example.com/report"]).unwrap();
        let body = t
            .render(
                datetime!(2030-01-01 12:00:00.5 UTC),
                Some("https://kb.example.com"),
            )
            .unwrap();
        assert_eq!(
            body,
            "Contact: mailto:security@example.com\nContact: https://example.com/report\n\
             Expires: 2030-06-30T12:00:00Z\nPolicy: https://example.com/security-policy\n\
             Preferred-Languages: en, de\nCanonical: https://kb.example.com/.well-known/security.txt\n"
        );
    }

    #[test]
    fn no_contact_means_no_file() {
        assert!(txt(&[" ", ""])
            .unwrap()
            .render(OffsetDateTime::now_utc(), None)
            .is_none());
    }

    #[test]
    fn refuses_contacts_that_are_not_mailto_or_https() {
        for bad in [
            "security@example.com",
            "http://example.com",
            "mailto:not-an-address",
            "https://",
            "https://example.com/a\nExpires: 1999-01-01T00:00:00Z",
        ] {
            assert!(txt(&[bad]).is_err(), "{bad:?} accepted");
        }
        assert!(SecurityTxt::new(vec![], Some("http://x".into()), vec![], 10).is_err());
        assert!(SecurityTxt::new(
            vec![],
            None,
            vec!["en\nExpires: 1999-01-01T00:00:00Z".into()],
            10
        )
        .is_err());
    }

    #[test]
    fn canonical_only_for_https_public_urls() {
        let t = txt(&["mailto:a@example.com"]).unwrap();
        let body = t
            .render(OffsetDateTime::now_utc(), Some("http://localhost:8080"))
            .unwrap();
        assert!(!body.contains("Canonical"));
    }
}
