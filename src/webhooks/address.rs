//! Where a webhook may point: http(s) URLs without userinfo whose host resolves only to public
//! addresses. Checked when the URL is set and again at every delivery, on the addresses the
//! delivery then connects to (never a second lookup), so a name that later resolves somewhere
//! private (DNS rebinding) is refused at delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// How long one lookup of the host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a URL or its addresses are refused. Carries no part of the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the URL is not an absolute http(s) URL without credentials")]
    Invalid,
    #[error("the host did not resolve")]
    Unresolvable,
    #[error("the host resolves to an address webhooks may not reach")]
    Forbidden,
}

impl AddressError {
    /// The error class shown in a delivery's `last_error`.
    pub fn class(self) -> &'static str {
        match self {
            AddressError::Invalid => "invalid_url",
            AddressError::Unresolvable => "dns",
            AddressError::Forbidden => "forbidden_address",
        }
    }
}

/// A parsed webhook URL: http or https, a host, no userinfo.
#[derive(Debug, Clone)]
pub struct WebhookUrl {
    url: url::Url,
}

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let raw = raw.trim();
        if raw.len() > MAX_URL_LEN {
            return Err(AddressError::Invalid);
        }
        let url = url::Url::parse(raw).map_err(|_| AddressError::Invalid)?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
            || url.host().is_none()
            || url.port_or_known_default().is_none()
        {
            return Err(AddressError::Invalid);
        }
        Ok(Self { url })
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The host as the resolver and TLS want it (IPv6 literals without brackets).
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        }
    }

    /// Resolves the host once and checks every address (all must be allowed, so a name with one
    /// public and one private address is refused). These are the addresses to connect to.
    pub async fn resolve_checked(
        &self,
        allow_private: bool,
    ) -> Result<Vec<SocketAddr>, AddressError> {
        let port = self
            .url
            .port_or_known_default()
            .ok_or(AddressError::Invalid)?;
        let addrs: Vec<SocketAddr> = match self.url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => {
                let lookup = tokio::net::lookup_host((name.to_owned(), port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(found)) => found.collect(),
                    _ => return Err(AddressError::Unresolvable),
                }
            }
            None => return Err(AddressError::Invalid),
        };
        if addrs.is_empty() {
            return Err(AddressError::Unresolvable);
        }
        if !allow_private && addrs.iter().any(|a| is_forbidden(a.ip())) {
            return Err(AddressError::Forbidden);
        }
        Ok(addrs)
    }
}

/// Whether a webhook may not reach `ip`: loopback, private (RFC 1918, ULA), link-local (cloud
/// metadata at 169.254.169.254 included), CGNAT, unspecified, multicast, broadcast, reserved,
/// documentation and benchmarking ranges, and IPv6 forms that embed one of those (mapped,
/// NAT64, 6to4) or tunnel to anywhere (Teredo).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: the cloud metadata service lives here
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0/24
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || ip.is_multicast()
        || a >= 240 // reserved, and the broadcast address
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_forbidden(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7 (AWS metadata fd00:ec2::254 included)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
        || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::/96 (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b && v4_forbidden(embedded(s[6], s[7]))) // NAT64
        || (s[0] == 0x2002 && v4_forbidden(embedded(s[1], s[2]))) // 6to4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
            "2001::1",
            "::127.0.0.1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn only_http_urls_with_a_host_and_no_userinfo_parse() {
        assert!(WebhookUrl::parse("https://hooks.example.com/kb?x=1").is_ok());
        assert!(WebhookUrl::parse("http://[2606:4700::1]:8080/").is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "file:///etc/passwd",
            "not a url",
            // (`https:///name` is not here: the URL standard reads it as `https://name/`,
            // a host like any other, resolved and checked at set and at delivery.)
            "https://",
            "http://:80/",
            "javascript:alert(1)",
        ] {
            assert_eq!(
                WebhookUrl::parse(bad).err(),
                Some(AddressError::Invalid),
                "{bad}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(WebhookUrl::parse(&long).is_err());
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_without_a_lookup() {
        let url = WebhookUrl::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert_eq!(
            url.resolve_checked(false).await.err(),
            Some(AddressError::Forbidden)
        );
        assert_eq!(url.resolve_checked(true).await.unwrap().len(), 1);
    }
}
