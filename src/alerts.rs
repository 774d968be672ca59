//! Spend alerts: a ceiling's thresholds (`alert_at_percent`, e.g. `[50, 80, 100]`) and the one
//! alert per threshold per period when settled spend crosses one: a mail to the account's
//! owner, a webhook delivery (when the account has a webhook) and an audit entry.
//!
//! The crossing is decided in the database, inside the spend writer's transaction that added the
//! spend: the charge's `RETURNING` says where the row stands (no extra statement unless a
//! threshold was crossed), and a conditional `UPDATE spend SET alerted_percent = …  WHERE … AND
//! alerted_percent < …` records it. The charge holds the row's lock until the commit, so with
//! several instances on PostgreSQL the next writer's charge sees the threshold already alerted:
//! exactly one alert. The mail, the delivery and the audit entry are written in that same
//! transaction (each in a savepoint: an alert that cannot be written never loses spend).
//!
//! Generic over the `spend` row: its provider key is a provider id, or `token:<id>` for a tool
//! token's own limit ([`SpendSubject`]), whose alerts then name the token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::audit::{self, Actor, Outcome};
use crate::clock::SharedClock;
use crate::db::{Conn, DbError, Optional as _};
use crate::mail::{Mail, Outbox};
use crate::money::Money;
use crate::params;
use crate::vault::Vault;
use crate::webhooks::{self, Webhooks};

/// Most thresholds one ceiling may have.
pub const MAX_THRESHOLDS: usize = 10;
/// The webhook event type of a crossing.
pub const EVENT_THRESHOLD: &str = "spend.threshold_crossed";

/// What a `spend` row's provider key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendSubject<'a> {
    /// A provider's ceiling for the account (`openai`).
    Provider(&'a str),
    /// A tool token's own limit: the key `token:<token id>`.
    Token(&'a str),
}

impl<'a> SpendSubject<'a> {
    /// The prefix of a tool token's spend key.
    pub const TOKEN_PREFIX: &'static str = "token:";

    pub fn of(key: &'a str) -> Self {
        match key.strip_prefix(Self::TOKEN_PREFIX) {
            Some(id) => SpendSubject::Token(id),
            None => SpendSubject::Provider(key),
        }
    }
}

/// Thresholds as a client sent them: whole percents 1..=100, at most [`MAX_THRESHOLDS`] distinct
/// ones; returned sorted and without repeats.
pub fn parse_thresholds(raw: &[i64]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(raw.len());
    for &p in raw {
        match u8::try_from(p) {
            Ok(p) if (1..=100).contains(&p) => out.push(p),
            _ => return Err("alert_at_percent holds whole percents from 1 to 100"),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > MAX_THRESHOLDS {
        return Err("alert_at_percent holds at most 10 thresholds");
    }
    Ok(out)
}

/// The stored form (`spend.alert_percents`): a JSON array, or NULL for none.
fn encode(thresholds: &[u8]) -> Option<String> {
    (!thresholds.is_empty()).then(|| json!(thresholds).to_string())
}

/// The stored form read back; anything unreadable counts as no thresholds.
pub fn decode(stored: Option<&str>) -> Vec<u8> {
    stored
        .and_then(|s| serde_json::from_str::<Vec<u8>>(s).ok())
        .unwrap_or_default()
}

/// Whole percent of `limit` that `spent` is (0 without a positive limit).
fn percent(spent: i64, limit: i64) -> i64 {
    if limit <= 0 {
        return 0;
    }
    let p = i128::from(spent.max(0)) * 100 / i128::from(limit);
    i64::try_from(p).unwrap_or(i64::MAX)
}

/// The thresholds of every spend row of `account` that has some, by provider key.
pub fn thresholds_of(
    conn: &Conn<'_>,
    account: i64,
) -> Result<std::collections::HashMap<String, Vec<u8>>, DbError> {
    let rows: Vec<(String, Option<String>)> = conn.query_all(
        "SELECT provider, alert_percents FROM spend WHERE account_id = ?1 AND alert_percents IS NOT NULL",
        params![account],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(rows
        .into_iter()
        .map(|(key, stored)| (key, decode(stored.as_deref())))
        .collect())
}

/// Sets the thresholds of the spend row `(account, key)` (which must exist: call it after the
/// ceiling is written), or keeps them with `None`, and re-arms them against the spend as it is:
/// thresholds at or below the current percent count as alerted (nothing is sent for them), the
/// ones above alert when spend crosses them. Returns the thresholds before and after.
pub fn store_thresholds(
    conn: &Conn<'_>,
    account: i64,
    key: &str,
    thresholds: Option<&[u8]>,
) -> Result<(Vec<u8>, Vec<u8>), DbError> {
    let row: Option<(Option<String>, i64, Option<i64>)> = conn
        .query_row(
            "SELECT alert_percents, spent_micros, limit_micros FROM spend WHERE account_id = ?1 AND provider = ?2",
            params![account, key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((stored, spent, limit)) = row else {
        return Ok((Vec::new(), Vec::new()));
    };
    let before = decode(stored.as_deref());
    let after = thresholds.map_or_else(|| before.clone(), <[u8]>::to_vec);
    let now_at = percent(spent, limit.unwrap_or(0));
    let alerted = after
        .iter()
        .copied()
        .filter(|t| i64::from(*t) <= now_at)
        .max()
        .unwrap_or(0);
    conn.execute(
        "UPDATE spend SET alert_percents = ?3, alerted_percent = ?4, alerted_period_start = period_start
         WHERE account_id = ?1 AND provider = ?2",
        params![account, key, encode(&after), i64::from(alerted)],
    )?;
    Ok((before, after))
}

/// A spend row as the charge that just moved it left it (the charge's `RETURNING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    pub limit_micros: Option<i64>,
    pub spent_micros: i64,
    pub period: String,
    pub period_start: i64,
    pub alert_percents: Option<String>,
    pub alerted_percent: i64,
    pub alerted_period_start: Option<i64>,
}

/// One threshold crossed, decided and recorded in the spend writer's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub account: i64,
    /// The spend row's provider key (see [`SpendSubject::of`]).
    pub key: String,
    pub threshold: u8,
    /// The whole percent spent, at or above `threshold`.
    pub percent: i64,
    pub limit: Money,
    pub spent: Money,
    pub period: String,
    pub period_start: i64,
}

/// What the spend writer calls when a threshold is crossed. `crossed` runs inside the writer's
/// transaction (write what it decides through `conn`, so it commits, or rolls back and is
/// decided again, with the spend); `committed` after every commit of the writer (wake workers).
pub trait AlertHook: Send + Sync {
    fn crossed(&self, conn: &Conn<'_>, crossing: &Crossing);
    fn committed(&self);
}

/// After a charge: the thresholds `charged` crossed that its period has not alerted yet, each
/// handed to `hook` once. Costs nothing (no statement) for rows without thresholds or without a
/// new crossing; otherwise one conditional `UPDATE` decides it.
pub fn after_charge(
    conn: &Conn<'_>,
    hook: &dyn AlertHook,
    account: i64,
    key: &str,
    charged: &Charged,
) -> Result<(), DbError> {
    let Some(limit) = charged.limit_micros.filter(|l| *l > 0) else {
        return Ok(());
    };
    let thresholds = decode(charged.alert_percents.as_deref());
    if thresholds.is_empty() {
        return Ok(());
    }
    let already = if charged.alerted_period_start == Some(charged.period_start) {
        charged.alerted_percent
    } else {
        0
    };
    let now_at = percent(charged.spent_micros, limit);
    let crossed: Vec<u8> = thresholds
        .into_iter()
        .filter(|t| i64::from(*t) > already && i64::from(*t) <= now_at)
        .collect();
    let Some(highest) = crossed.last().copied() else {
        return Ok(());
    };
    // In a savepoint (only now, so a batch without a crossing pays nothing for it): an alert
    // that cannot be written rolls back alone and never loses the spend.
    conn.savepoint(|c| {
        let won = c
            .query_row(
                "UPDATE spend SET alerted_percent = ?3, alerted_period_start = ?4
                 WHERE account_id = ?1 AND provider = ?2 AND period_start = ?4
                   AND (alerted_period_start IS NULL OR alerted_period_start <> ?4 OR alerted_percent < ?3)
                 RETURNING 1",
                params![account, key, i64::from(highest), charged.period_start],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !won {
            return Ok(());
        }
        for threshold in crossed {
            hook.crossed(
                c,
                &Crossing {
                    account,
                    key: key.to_owned(),
                    threshold,
                    percent: now_at,
                    limit: Money::from_micros(limit),
                    spent: Money::from_micros(charged.spent_micros),
                    period: charged.period.clone(),
                    period_start: charged.period_start,
                },
            );
        }
        Ok(())
    })
}

/// The application's [`AlertHook`]: mail, webhook and audit entry per crossing.
pub struct SpendAlerts {
    vault: Arc<Vault>,
    outbox: Outbox,
    webhooks: Webhooks,
    clock: SharedClock,
    /// Set when a crossing queued something; the commit after it wakes the workers.
    queued: AtomicBool,
}

impl SpendAlerts {
    pub fn new(vault: Arc<Vault>, outbox: Outbox, webhooks: Webhooks, clock: SharedClock) -> Self {
        Self {
            vault,
            outbox,
            webhooks,
            clock,
            queued: AtomicBool::new(false),
        }
    }
}

/// The webhook event's `data` for a crossing: account-safe figures and the subject's public
/// identity (provider id, or token id and name), never a key, an email or a secret.
pub fn event_data(crossing: &Crossing, token_name: Option<&str>) -> serde_json::Value {
    let mut data = json!({
        "threshold_percent": crossing.threshold,
        "percent": crossing.percent,
        "limit_usd": crossing.limit.to_string(),
        "spent_usd": crossing.spent.to_string(),
        "period": crossing.period,
        "period_start": crate::timefmt::rfc3339(crossing.period_start),
    });
    match SpendSubject::of(&crossing.key) {
        SpendSubject::Provider(p) => data["provider"] = json!(p),
        SpendSubject::Token(id) => {
            data["token"] = json!({"id": id, "name": token_name.unwrap_or_default()})
        }
    }
    data
}

impl AlertHook for SpendAlerts {
    fn crossed(&self, conn: &Conn<'_>, c: &Crossing) {
        let now = self.clock.unix();
        let token_name = match SpendSubject::of(&c.key) {
            SpendSubject::Token(id) => conn
                .query_row(
                    "SELECT name FROM tool_tokens WHERE id = ?1 AND account_id = ?2",
                    params![id, c.account],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .ok()
                .flatten(),
            SpendSubject::Provider(_) => None,
        };
        let subject = match SpendSubject::of(&c.key) {
            SpendSubject::Provider(p) => format!("your {p} spend"),
            SpendSubject::Token(id) => format!(
                "the spend of tool token {} ({id})",
                token_name.as_deref().unwrap_or("")
            ),
        };
        // The mail, to the account's owner.
        match owner_address(conn, &self.vault, c.account) {
            Some(to) => self.outbox.queue(
                conn,
                &Mail {
                    kind: "spend_alert",
                    to,
                    subject: "keybroker: spend alert",
                    body: format!(
                        "Hello,\n\n{subject} has reached {}% of its ceiling: {} of {} USD this period ({}, since {}).\n\nCalls are refused once the ceiling is reached. You can change the ceiling and its alerts in the dashboard.\n",
                        c.threshold,
                        c.spent,
                        c.limit,
                        c.period,
                        crate::timefmt::rfc3339(c.period_start),
                    ),
                },
                now,
            ),
            None => tracing::warn!("spend alert: the account's address does not open; no mail is sent"),
        }
        // The webhook, when the account has one.
        let event = webhooks::Event {
            kind: EVENT_THRESHOLD,
            data: event_data(c, token_name.as_deref()),
        };
        webhooks::queue(conn, c.account, &event, now);
        // The audit entry, on the account's chain.
        let detail = format!(
            "threshold {}%; spent {} of {}",
            c.threshold, c.spent, c.limit
        );
        let audited = conn.savepoint(|tx| {
            audit::append_with_detail(
                tx,
                &audit::Event {
                    account_id: Some(c.account),
                    actor: Actor::System,
                    action: "spend.alert",
                    resource: &c.key,
                    request_id: "",
                    client_addr: "",
                    outcome: Outcome::Success,
                    at: now,
                },
                &detail,
            )
        });
        if let Err(e) = audited {
            tracing::error!(error = %e, "spend alert: the audit entry could not be written");
        }
        self.queued.store(true, Ordering::Relaxed);
    }

    fn committed(&self) {
        if self.queued.swap(false, Ordering::Relaxed) {
            self.outbox.wake();
            self.webhooks.wake();
        }
    }
}

/// The account's address, opened from its sealed blob (for the alert mail only).
fn owner_address(conn: &Conn<'_>, vault: &Vault, account: i64) -> Option<String> {
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT email_blob FROM accounts WHERE id = ?1",
            params![account],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten()?;
    let plain = vault
        .open(&blob, &crate::vault_store::email_binding(account))
        .ok()?;
    plain.expose_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_whole_percents_sorted_and_deduplicated() {
        assert_eq!(parse_thresholds(&[100, 50, 80, 50]).unwrap(), [50, 80, 100]);
        assert!(parse_thresholds(&[0]).is_err());
        assert!(parse_thresholds(&[101]).is_err());
        assert!(parse_thresholds(&[-5]).is_err());
        assert!(parse_thresholds(&(1..=11).collect::<Vec<_>>()).is_err());
        assert_eq!(parse_thresholds(&[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_token_key_names_the_token() {
        assert_eq!(SpendSubject::of("openai"), SpendSubject::Provider("openai"));
        assert_eq!(SpendSubject::of("token:abc"), SpendSubject::Token("abc"));
    }

    #[test]
    fn stored_thresholds_read_back() {
        assert_eq!(decode(encode(&[50, 100]).as_deref()), [50, 100]);
        assert_eq!(encode(&[]), None);
        assert!(decode(Some("garbage")).is_empty());
    }

    #[test]
    fn percent_is_floored_and_needs_a_positive_limit() {
        assert_eq!(percent(4_999, 10_000), 49);
        assert_eq!(percent(5_000, 10_000), 50);
        assert_eq!(percent(1, 0), 0);
    }
}
