//! Who the client is and whether it reached us over HTTPS, resolved once per request. Behind a
//! reverse proxy the TCP peer is the proxy, so `X-Forwarded-For` / `X-Forwarded-Proto` are
//! believed, but only when the peer is inside a configured trusted CIDR; anyone else could write
//! them. Every use of a client address (audit log, sessions, throttles, access log) goes through
//! [`ClientAddr::of`], so they all agree.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The networks whose forwarding headers are believed (`--trusted-proxy`). Empty: none.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The resolved client: its address (absent only when the transport has none) and whether the
/// client's own connection is HTTPS (our TLS listener, or a trusted proxy that says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: Option<IpAddr>,
    pub https: bool,
}

impl ClientAddr {
    /// The client of this request: what the middleware resolved, or (outside it) the peer.
    pub fn of(req: &HttpRequest) -> Self {
        if let Some(addr) = req.extensions().get::<ClientAddr>() {
            return *addr;
        }
        Self {
            ip: req.peer_addr().map(|a| a.ip().to_canonical()),
            https: req.app_config().secure(),
        }
    }

    /// Whether a browser will drop our `__Host-`/`Secure` session cookie on this request: it
    /// came over plain HTTP from a client that is not on loopback (browsers accept secure
    /// cookies over plain HTTP from `localhost` only). The cookie is never weakened for it; the
    /// login page and answer say why signing in will not stick.
    pub fn drops_secure_cookies(&self) -> bool {
        !self.https && self.ip.is_some_and(|ip| !ip.is_loopback())
    }

    /// The address as text, empty when unknown (the audit log's and sessions' column).
    pub fn ip_string(&self) -> String {
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }
}

/// Resolves the client from the peer, the listener and the forwarding headers.
pub fn resolve(
    peer: Option<IpAddr>,
    tls: bool,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> ClientAddr {
    let peer = peer.map(|ip| ip.to_canonical());
    let Some(direct) = peer.filter(|ip| trusted.contains(*ip)) else {
        return ClientAddr {
            ip: peer,
            https: tls,
        };
    };
    ClientAddr {
        ip: Some(forwarded_for(headers, trusted).unwrap_or(direct)),
        https: tls || forwarded_https(headers),
    }
}

/// The right-most `X-Forwarded-For` entry that is not a trusted proxy (the left-most when all
/// are). `None` when the header is absent or any entry on the way is not an address, so a
/// malformed header means "the peer", never an error.
fn forwarded_for(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut entries = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        entries.extend(value.to_str().ok()?.split(','));
    }
    let mut leftmost = None;
    for entry in entries.iter().rev() {
        let ip = parse_entry(entry)?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// `203.0.113.7`, `2001:db8::1`, and the forms with a port (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The proxy nearest us wrote the last `X-Forwarded-Proto` value.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get_all(X_FORWARDED_PROTO)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// Resolves the client once and stores it in the request's extensions for [`ClientAddr::of`].
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let none = TrustedProxies::default();
    let trusted = req.app_data::<web::Data<TrustedProxies>>();
    let addr = resolve(
        req.peer_addr().map(|a| a.ip()),
        req.app_config().secure(),
        req.headers(),
        trusted.map_or(&none, |t| t.get_ref()),
    );
    req.extensions_mut().insert(addr);
    next.call(req).await
}

/// `scheme://host[:port]` this request was addressed to: the scheme as resolved above, the host
/// from the `Host` header (never `X-Forwarded-Host`, which nobody vouches for). Used only where no
/// `KEYBROKER_PUBLIC_URL` is configured.
pub fn own_origin(req: &HttpRequest) -> String {
    let scheme = if ClientAddr::of(req).https {
        "https"
    } else {
        "http"
    };
    // HTTP/2 (which the TLS listener also speaks) carries the host in the URI, not in `Host`.
    let config = req.app_config();
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_else(|| config.host());
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        map
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().filter_map(|n| n.parse().ok()).collect())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let addr = resolve(ip("192.0.2.1"), false, &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(
            addr,
            ClientAddr {
                ip: ip("192.0.2.1"),
                https: false
            }
        );
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.9, 203.0.113.7"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let addr = resolve(ip("10.0.0.1"), false, &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(
            addr,
            ClientAddr {
                ip: ip("203.0.113.7"),
                https: true
            }
        );
    }

    #[test]
    fn entries_with_ports_and_mapped_addresses_are_understood() {
        let t = trusted(&["127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), false, &h, &t).ip,
            ip("2001:db8::1")
        );
        let h = headers(&[("x-forwarded-for", "203.0.113.7:80")]);
        assert_eq!(
            resolve(ip("127.0.0.1"), false, &h, &t).ip,
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_malformed_header_from_a_trusted_proxy_means_the_peer() {
        let t = trusted(&["127.0.0.1/32"]);
        for bad in ["", "not-an-ip", "203.0.113.7, garbage", "203.0.113.7,,"] {
            let h = headers(&[("x-forwarded-for", bad)]);
            assert_eq!(
                resolve(ip("127.0.0.1"), false, &h, &t).ip,
                ip("127.0.0.1"),
                "{bad:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_bytes(b"\xff\xfe").unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(resolve(ip("127.0.0.1"), false, &h, &t).ip, ip("127.0.0.1"));
    }

    #[test]
    fn only_plain_http_from_off_loopback_drops_secure_cookies() {
        let at = |addr: &str, https| ClientAddr {
            ip: ip(addr),
            https,
        };
        assert!(at("203.0.113.7", false).drops_secure_cookies());
        assert!(at("::ffff:192.0.2.1", false).drops_secure_cookies());
        assert!(!at("203.0.113.7", true).drops_secure_cookies());
        assert!(!at("127.0.0.1", false).drops_secure_cookies());
        assert!(!at("::1", false).drops_secure_cookies());
        assert!(!ClientAddr {
            ip: None,
            https: false
        }
        .drops_secure_cookies());
    }

    #[test]
    fn a_chain_of_trusted_proxies_yields_the_leftmost() {
        let h = headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        let addr = resolve(ip("10.0.0.1"), false, &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(addr.ip, ip("10.0.0.3"));
    }

    #[test]
    fn only_a_final_https_proto_counts() {
        let t = trusted(&["127.0.0.1/32"]);
        let https = |v: &str| {
            resolve(
                ip("127.0.0.1"),
                false,
                &headers(&[("x-forwarded-proto", v)]),
                &t,
            )
            .https
        };
        assert!(https("https"));
        assert!(https("HTTPS"));
        assert!(https("http, https"));
        assert!(!https("https, http"));
        assert!(!https("ftp"));
        // Our own TLS listener is HTTPS whatever a proxy says.
        assert!(
            resolve(
                ip("127.0.0.1"),
                true,
                &headers(&[("x-forwarded-proto", "http")]),
                &t
            )
            .https
        );
    }
}
