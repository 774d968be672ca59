//! One worker's upstream HTTP client, swapped for a fresh one after it has idled past the pool's
//! keep-alive.
//!
//! Why: awc closes a pooled connection that idled past its keep-alive only when a later call asks
//! the pool for one. After a burst of hundreds of concurrent calls and a pause, the next call
//! paid to close every one of them (about 10 µs each: 6.6 ms for the first stream after the
//! bench's burst), and until that call an idle server held them all open, in `CLOSE_WAIT` once
//! the provider had hung up. Once the client has not been asked for a connection for longer than
//! the keep-alive, none of its idle connections can be used again anyway, so a sweeper task on
//! the worker replaces it then: dropping the old client closes those connections during the
//! pause, off any call's path. Calls still in flight keep the old pool alive until they end.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use actix_web::web;

use crate::proxy::forward::{upstream_client, ProxySettings};

pub struct UpstreamClient {
    settings: ProxySettings,
    current: RefCell<awc::Client>,
    last_used: Cell<Instant>,
    /// Whether `current` has been handed out since it was made (a fresh client has nothing to
    /// close, so it is not swapped again).
    used: Cell<bool>,
    sweeping: Cell<bool>,
}

impl UpstreamClient {
    pub fn new(settings: &ProxySettings) -> Self {
        Self {
            settings: settings.clone(),
            current: RefCell::new(upstream_client(settings)),
            last_used: Cell::new(Instant::now()),
            used: Cell::new(false),
            sweeping: Cell::new(false),
        }
    }

    /// The client for one call. The first call on a worker starts that worker's sweeper.
    pub fn checkout(this: &web::Data<Self>) -> awc::Client {
        this.last_used.set(Instant::now());
        this.used.set(true);
        if !this.sweeping.replace(true) {
            actix_web::rt::spawn(sweep(this.clone()));
        }
        this.current.borrow().clone()
    }

    /// Replaces the client if it has idled past the keep-alive; returns whether it did.
    fn swap_if_idle(&self, now: Instant) -> bool {
        let idle = now.saturating_duration_since(self.last_used.get());
        if !self.used.get() || idle <= self.settings.upstream_idle {
            return false;
        }
        let old = self.current.replace(upstream_client(&self.settings));
        self.used.set(false);
        drop(old);
        true
    }
}

/// Runs for the worker's lifetime: checks twice per keep-alive period.
async fn sweep(this: web::Data<UpstreamClient>) {
    let period = (this.settings.upstream_idle / 2).max(Duration::from_millis(250));
    loop {
        actix_web::rt::time::sleep(period).await;
        this.swap_if_idle(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn an_idle_used_client_is_swapped_and_a_fresh_or_busy_one_is_not() {
        let settings = ProxySettings {
            upstream_idle: Duration::from_secs(4),
            ..ProxySettings::default()
        };
        let client = web::Data::new(UpstreamClient::new(&settings));
        let start = Instant::now();
        // Never used: nothing to close.
        assert!(!client.swap_if_idle(start + Duration::from_secs(60)));

        let _ = UpstreamClient::checkout(&client);
        let used_at = client.last_used.get();
        assert!(!client.swap_if_idle(used_at + Duration::from_secs(3)));
        assert!(client.swap_if_idle(used_at + Duration::from_secs(5)));
        // The fresh client is not swapped again until it has been used.
        assert!(!client.swap_if_idle(used_at + Duration::from_secs(60)));
    }
}
