//! Throttling of password checks (and other guessable or mail-sending requests) per account and
//! per client address, with `governor`'s GCRA limiters running on the injected clock so tests move
//! time instead of sleeping.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;
use crate::config::{Limit, LimitPair};

/// Past this many tracked keys, keys whose limit has fully refilled are dropped, so a flood of
/// distinct emails or addresses cannot grow memory without bound.
const RETAIN_ABOVE: usize = 10_000;

/// Our clock as governor sees it: time since the Unix epoch.
#[derive(Clone)]
struct InjectedClock(SharedClock);

impl GovernorClock for InjectedClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        let nanos = self.0.now().unix_timestamp_nanos();
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, InjectedClock, NoOpMiddleware<Duration>>;

fn quota(limit: Limit) -> Quota {
    let attempts = NonZeroU32::new(limit.attempts).unwrap_or(NonZeroU32::MIN);
    let period = limit.window / attempts.get();
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(attempts))
        .allow_burst(attempts)
}

fn keyed<K: Clone + Hash + Eq>(limit: Limit, clock: &SharedClock) -> Keyed<K> {
    RateLimiter::new(
        quota(limit),
        DefaultKeyedStateStore::default(),
        InjectedClock(clock.clone()),
    )
}

/// Too many attempts; try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn secs(self) -> u64 {
        let d = self.0;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

pub struct Throttle {
    per_account: Keyed<[u8; 32]>,
    per_client: Keyed<IpAddr>,
    clock: InjectedClock,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

impl Throttle {
    pub fn new(limits: LimitPair, clock: &SharedClock) -> Self {
        Self {
            per_account: keyed(limits.per_account, clock),
            per_client: keyed(limits.per_client, clock),
            clock: InjectedClock(clock.clone()),
        }
    }

    /// Counts one attempt against the client address (when known) and the account key. The
    /// account key is the peppered email hash, taken whether or not the account exists, so a
    /// 429 says nothing about who has an account.
    pub fn check(&self, account_key: &[u8; 32], client: Option<IpAddr>) -> Result<(), RetryAfter> {
        if let Some(ip) = client {
            Self::one(&self.per_client, &ip, &self.clock)?;
        }
        Self::one(&self.per_account, account_key, &self.clock)
    }

    fn one<K: Clone + Hash + Eq>(
        limiter: &Keyed<K>,
        key: &K,
        clock: &InjectedClock,
    ) -> Result<(), RetryAfter> {
        if limiter.len() > RETAIN_ABOVE {
            limiter.retain_recent();
        }
        limiter
            .check_key(key)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    fn limits(attempts: u32, secs: u64) -> LimitPair {
        let l = Limit {
            attempts,
            window: Duration::from_secs(secs),
        };
        LimitPair {
            per_account: l,
            per_client: Limit { attempts: 100, ..l },
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_the_clock_moves() {
        let manual = ManualClock::default();
        let clock: SharedClock = Arc::new(manual.clone());
        let t = Throttle::new(limits(3, 60), &clock);
        let key = [7u8; 32];
        for _ in 0..3 {
            assert!(t.check(&key, None).is_ok());
        }
        let wait = t.check(&key, None).unwrap_err();
        assert_eq!(wait.secs(), 20);
        assert!(t.check(&[8u8; 32], None).is_ok(), "other keys unaffected");
        manual.advance(time::Duration::seconds(20));
        assert!(t.check(&key, None).is_ok());
        assert!(t.check(&key, None).is_err());
    }

    #[test]
    fn the_client_limit_applies_across_accounts() {
        let clock: SharedClock = Arc::new(ManualClock::default());
        let t = Throttle::new(
            LimitPair {
                per_account: Limit {
                    attempts: 100,
                    window: Duration::from_secs(60),
                },
                per_client: Limit {
                    attempts: 2,
                    window: Duration::from_secs(60),
                },
            },
            &clock,
        );
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(t.check(&[1; 32], Some(ip)).is_ok());
        assert!(t.check(&[2; 32], Some(ip)).is_ok());
        assert!(t.check(&[3; 32], Some(ip)).is_err());
        assert!(t.check(&[3; 32], Some([10, 0, 0, 1].into())).is_ok());
    }
}
