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
use crate::env_var::env_var;

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

/// At most `attempts` within `window`, refilled evenly over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub attempts: u32,
    pub window: Duration,
}

/// Limits keyed by account (the peppered email hash, whether or not the account exists) and by
/// client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitPair {
    pub per_account: Limit,
    pub per_client: Limit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Password checks: login and reauth.
    pub login: LimitPair,
    /// Password-reset requests (each may send a mail).
    pub reset: LimitPair,
    /// Sign-ups (each sends a mail to the address).
    pub signup: LimitPair,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        let limit = |attempts, secs| Limit {
            attempts,
            window: Duration::from_secs(secs),
        };
        Self {
            login: LimitPair {
                per_account: limit(10, 15 * 60),
                per_client: limit(50, 15 * 60),
            },
            reset: LimitPair {
                per_account: limit(5, 60 * 60),
                per_client: limit(20, 60 * 60),
            },
            signup: LimitPair {
                per_account: limit(5, 60 * 60),
                per_client: limit(20, 60 * 60),
            },
        }
    }
}

impl ThrottleSettings {
    /// `KEYBROKER_LOGIN_ATTEMPTS_PER_ACCOUNT` (10), `KEYBROKER_LOGIN_ATTEMPTS_PER_CLIENT` (50),
    /// `KEYBROKER_LOGIN_WINDOW_SECS` (900), `KEYBROKER_RESET_REQUESTS_PER_ACCOUNT` (5),
    /// `KEYBROKER_RESET_REQUESTS_PER_CLIENT` (20), `KEYBROKER_RESET_WINDOW_SECS` (3600), and the
    /// same three for `SIGNUP` (5, 20, 3600). A value
    /// that is not a positive integer is ignored with a warning.
    pub fn from_env() -> Self {
        let d = Self::default();
        let num = |name: &str, default: u64| -> u64 {
            match env_var(name).map(|v| v.trim().parse::<u64>()) {
                None => default,
                Some(Ok(n)) if n > 0 && n <= u64::from(u32::MAX) => n,
                Some(_) => {
                    tracing::warn!(
                        variable = name,
                        default,
                        "not a positive integer; using the default"
                    );
                    default
                }
            }
        };
        let pair = |prefix: &str, what: &str, d: LimitPair| {
            let window = Duration::from_secs(num(
                &format!("KEYBROKER_{prefix}_WINDOW_SECS"),
                d.per_account.window.as_secs(),
            ));
            let attempts = |scope: &str, default: u32| {
                u32::try_from(num(
                    &format!("KEYBROKER_{prefix}_{what}_PER_{scope}"),
                    u64::from(default),
                ))
                .unwrap_or(default)
            };
            LimitPair {
                per_account: Limit {
                    attempts: attempts("ACCOUNT", d.per_account.attempts),
                    window,
                },
                per_client: Limit {
                    attempts: attempts("CLIENT", d.per_client.attempts),
                    window,
                },
            }
        };
        Self {
            login: pair("LOGIN", "ATTEMPTS", d.login),
            reset: pair("RESET", "REQUESTS", d.reset),
            signup: pair("SIGNUP", "REQUESTS", d.signup),
        }
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
