//! `keybroker healthcheck`: GET `/healthz` of the local server and exit 0 on a 2xx answer, for a
//! container's `HEALTHCHECK`. The runtime image has no curl; the binary already carries an HTTP
//! client, so the probe costs no extra package and reads the same `KEYBROKER_BIND` as `serve`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The URL of `/healthz` for a server bound to `bind`: an unspecified address (`0.0.0.0`, `::`)
/// is reached on loopback.
pub fn local_url(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, bind.port()))
}

/// One GET with a deadline; Ok only for a 2xx status.
pub async fn probe(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let status = match client.get(url).send().await {
        Ok(res) => res.status(),
        Err(e) => anyhow::bail!("{}", why(url, timeout, &e)),
    };
    if !status.is_success() {
        anyhow::bail!("{url} answered HTTP {status}");
    }
    Ok(status.as_u16())
}

/// What went wrong, in words an operator can act on: refused, timed out, or the root cause.
fn why(url: &str, timeout: Duration, e: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let io = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
        .find_map(|e| e.downcast_ref::<std::io::Error>());
    if e.is_timeout() {
        format!("{url} did not answer within {} s", timeout.as_secs())
    } else if io.is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
        format!("connection to {url} refused: is keybroker running and bound to that address?")
    } else if e.is_connect() {
        format!("could not connect to {url}: {root}")
    } else {
        format!("{url}: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_and_a_bad_status_say_what_failed() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!("http://127.0.0.1:{port}/healthz");
        let err = probe(&url, Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("refused"), "{err}");
        assert!(err.contains(&url), "{err}");
    }

    #[test]
    fn an_unspecified_bind_address_is_probed_on_loopback() {
        assert_eq!(
            local_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            local_url("[::]:9000".parse().unwrap()),
            "http://[::1]:9000/healthz"
        );
        assert_eq!(
            local_url("10.0.0.5:80".parse().unwrap()),
            "http://10.0.0.5:80/healthz"
        );
    }
}
