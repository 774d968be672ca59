//! Reading spend back: the start-up load (with holds left by a crash charged in full) and the
//! usage report.

use std::path::Path;

use crate::db::{Conn, Optional as _};
use crate::params;
use serde::Serialize;
use time::OffsetDateTime;

use crate::money::Money;
use crate::spend::journal::{self, JournaledHold};
use crate::spend::ledger::LedgerRow;
use crate::spend::writer::parse_period;

/// What the start-up recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Holds found from calls in flight when the process stopped, charged at their full amount.
    pub holds_charged: u64,
    pub amount: Money,
    /// Of those, the holds only the hold journal knew of (the database never saw them).
    pub from_journal: u64,
    /// Journal lines skipped as torn or corrupt.
    pub journal_lines_skipped: u64,
}

/// What start-up recovery hands to the new run.
#[derive(Debug)]
pub struct Recovery {
    pub recovered: Recovered,
    pub rows: Vec<LedgerRow>,
    /// The new run's hold-journal epoch.
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("hold journal: {0}")]
    Journal(#[from] std::io::Error),
}

/// Charges every hold left by a previous run (fail closed): those still open in `spend_holds`
/// and those in the hold journal (`journal_dir`) that the database never saw. Then starts a new
/// journal epoch and returns the rows to load into the ledger. One transaction; the previous
/// run's journal files are deleted after it commits (see `spend::journal`).
pub fn recover_and_load(
    conn: &Conn<'_>,
    journal_dir: Option<&Path>,
) -> Result<Recovery, RecoverError> {
    let tx = conn;
    let (epoch, committed_seq): (i64, i64) = tx
        .query_row(
            "SELECT epoch, committed_seq FROM spend_journal_state WHERE id = 1",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, 0));
    let (epoch, committed_seq) = (
        u64::try_from(epoch).unwrap_or(0),
        u64::try_from(committed_seq).unwrap_or(0),
    );
    let mut holds: Vec<(i64, String, i64, i64)> = tx
        .prepare("SELECT account_id, provider, amount_micros, period_start FROM spend_holds")?
        .query_map((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut recovered = Recovered::default();
    if let Some(dir) = journal_dir {
        let (journaled, skipped) = journal::read_epoch(dir, epoch)?;
        recovered.journal_lines_skipped = skipped;
        // A hold at or below the committed sequence number is in the database already (open in
        // `spend_holds`, or settled): charging it again would count it twice.
        for JournaledHold {
            seq,
            account,
            provider,
            amount,
            period_start,
            ..
        } in journaled
        {
            if seq > committed_seq {
                recovered.from_journal += 1;
                holds.push((account, provider, amount.micros(), period_start));
            }
        }
    }
    for (account, provider, amount, period_start) in &holds {
        if !charge(tx, *account, provider, *period_start, *amount)? {
            continue;
        }
        recovered.holds_charged += 1;
        recovered.amount = recovered.amount.saturating_add(Money::from_micros(*amount));
    }
    tx.execute("DELETE FROM spend_holds", ())?;
    let next_epoch = epoch + 1;
    tx.execute(
        "INSERT INTO spend_journal_state (id, epoch, committed_seq) VALUES (1, ?1, 0)
         ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, committed_seq = 0",
        [i64::try_from(next_epoch).unwrap_or(i64::MAX)],
    )?;
    let rows = rows(tx)?;
    if let Some(dir) = journal_dir {
        journal::delete_before(dir, next_epoch)?;
    }
    Ok(Recovery {
        recovered,
        rows,
        epoch: next_epoch,
    })
}

/// Every stored ceiling and spend row, to load into a ledger.
pub fn rows(conn: &Conn<'_>) -> Result<Vec<LedgerRow>, crate::db::DbError> {
    rows_where(conn, None)
}

/// The stored ceiling and spend rows of one account.
pub fn account_rows(conn: &Conn<'_>, account: i64) -> Result<Vec<LedgerRow>, crate::db::DbError> {
    rows_where(conn, Some(account))
}

fn rows_where(conn: &Conn<'_>, account: Option<i64>) -> Result<Vec<LedgerRow>, crate::db::DbError> {
    let mut stmt = conn.prepare(
        "SELECT account_id, provider, limit_micros, period, period_start, spent_micros FROM spend
         WHERE CAST(?1 AS BIGINT) IS NULL OR account_id = ?1",
    )?;
    let rows = stmt.query_map(crate::params![account], |r| {
        let period: String = r.get(3)?;
        Ok(LedgerRow {
            account: r.get(0)?,
            provider: r.get(1)?,
            limit: r.get::<_, Option<i64>>(2)?.map(Money::from_micros),
            period: parse_period(&period).unwrap_or_default(),
            period_start: OffsetDateTime::from_unix_timestamp(r.get(4)?)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            spent: Money::from_micros(r.get(5)?),
        })
    })?;
    rows.collect()
}

/// Adds `amount` to the spend of `period_start` for the pair (a later period starts over from it;
/// an earlier one is already over and charges nothing more). `false` when the account is gone.
pub fn charge(
    conn: &Conn<'_>,
    account: i64,
    provider: &str,
    period_start: i64,
    amount: i64,
) -> Result<bool, crate::db::DbError> {
    charge_returning(conn, account, provider, period_start, amount).map(|row| row.is_some())
}

/// [`charge`], returning the row as the charge left it (what `alerts::after_charge` decides
/// on) in the same statement; `None` when the account is gone.
pub fn charge_returning(
    conn: &Conn<'_>,
    account: i64,
    provider: &str,
    period_start: i64,
    amount: i64,
) -> Result<Option<crate::alerts::Charged>, crate::db::DbError> {
    conn.prepare_cached(
        "INSERT INTO spend (account_id, provider, period_start, spent_micros)
         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1)
         ON CONFLICT (account_id, provider) DO UPDATE SET
            spent_micros = CASE
                WHEN excluded.period_start = spend.period_start THEN spend.spent_micros + excluded.spent_micros
                WHEN excluded.period_start > spend.period_start THEN excluded.spent_micros
                ELSE spend.spent_micros END,
            period_start = CASE WHEN excluded.period_start > spend.period_start
                            THEN excluded.period_start ELSE spend.period_start END
         RETURNING limit_micros, spent_micros, period, period_start, alert_percents, alerted_percent,
                   alerted_period_start",
    )?
    .query_row(params![account, provider, period_start, amount], |r| {
        Ok(crate::alerts::Charged {
            limit_micros: r.get(0)?,
            spent_micros: r.get(1)?,
            period: r.get(2)?,
            period_start: r.get(3)?,
            alert_percents: r.get(4)?,
            alerted_percent: r.get(5)?,
            alerted_period_start: r.get(6)?,
        })
    })
    .optional()
}

/// Usage of one provider over a time range.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageRow {
    pub provider: String,
    pub calls: i64,
    pub refused: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// Decimal USD.
    #[schema(value_type = String)]
    pub spend_usd: Money,
    pub fallback_priced_calls: i64,
}

/// Per-provider usage for hours starting in `[since, until)`.
pub fn usage(
    conn: &Conn<'_>,
    account: i64,
    since: i64,
    until: i64,
) -> crate::db::Result<Vec<UsageRow>> {
    let since_hour = since - since.rem_euclid(3600);
    let mut stmt = conn.prepare_cached(
        "SELECT provider, CAST(SUM(calls) AS BIGINT), CAST(SUM(refused) AS BIGINT), CAST(SUM(failed) AS BIGINT),
                CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(cached_input_tokens) AS BIGINT),
                CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(reasoning_tokens) AS BIGINT),
                CAST(SUM(spend_micros) AS BIGINT), CAST(SUM(fallback_priced) AS BIGINT)
         FROM usage_hourly WHERE account_id = ?1 AND hour >= ?2 AND hour < ?3
         GROUP BY provider ORDER BY provider",
    )?;
    let rows = stmt.query_map(params![account, since_hour, until], |r| {
        Ok(UsageRow {
            provider: r.get(0)?,
            calls: r.get(1)?,
            refused: r.get(2)?,
            failed: r.get(3)?,
            input_tokens: r.get(4)?,
            cached_input_tokens: r.get(5)?,
            output_tokens: r.get(6)?,
            reasoning_tokens: r.get(7)?,
            spend_usd: Money::from_micros(r.get(8)?),
            fallback_priced_calls: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// How `GET /api/v1/usage` groups its rows beside the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Provider,
    Token,
    Agent,
}

impl GroupBy {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "provider" => Some(Self::Provider),
            "token" => Some(Self::Token),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

/// Usage of one provider by one token, or under one agent label, over a time range.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageGroup {
    pub provider: String,
    /// With `group_by=token`: the token's id ('' for calls made without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// With `group_by=token`: the token's name ('' when the token is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    /// With `group_by=agent`: the `X-Keybroker-Agent` label; null for calls without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub agent: Option<Option<String>>,
    pub calls: i64,
    pub refused: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// Decimal USD.
    #[schema(value_type = String)]
    pub spend_usd: Money,
    pub fallback_priced_calls: i64,
}

/// Usage for hours starting in `[since, until)` per (provider, token) or (provider, agent label),
/// from `usage_hourly_by_token`; ordered by provider, then token id or label.
pub fn usage_grouped(
    conn: &Conn<'_>,
    account: i64,
    since: i64,
    until: i64,
    by: GroupBy,
) -> crate::db::Result<Vec<UsageGroup>> {
    let since_hour = since - since.rem_euclid(3600);
    let sql = match by {
        GroupBy::Agent => {
            "SELECT u.provider, u.agent, '', CAST(SUM(u.calls) AS BIGINT), CAST(SUM(u.refused) AS BIGINT),
                    CAST(SUM(u.failed) AS BIGINT), CAST(SUM(u.input_tokens) AS BIGINT),
                    CAST(SUM(u.cached_input_tokens) AS BIGINT), CAST(SUM(u.output_tokens) AS BIGINT),
                    CAST(SUM(u.reasoning_tokens) AS BIGINT), CAST(SUM(u.spend_micros) AS BIGINT),
                    CAST(SUM(u.fallback_priced) AS BIGINT)
             FROM usage_hourly_by_token u WHERE u.account_id = ?1 AND u.hour >= ?2 AND u.hour < ?3
             GROUP BY u.provider, u.agent ORDER BY u.provider, u.agent"
        }
        GroupBy::Token | GroupBy::Provider => {
            "SELECT u.provider, u.token_id, COALESCE(MAX(t.name), ''), CAST(SUM(u.calls) AS BIGINT),
                    CAST(SUM(u.refused) AS BIGINT), CAST(SUM(u.failed) AS BIGINT),
                    CAST(SUM(u.input_tokens) AS BIGINT), CAST(SUM(u.cached_input_tokens) AS BIGINT),
                    CAST(SUM(u.output_tokens) AS BIGINT), CAST(SUM(u.reasoning_tokens) AS BIGINT),
                    CAST(SUM(u.spend_micros) AS BIGINT), CAST(SUM(u.fallback_priced) AS BIGINT)
             FROM usage_hourly_by_token u
             LEFT JOIN tool_tokens t ON t.id = u.token_id AND t.account_id = u.account_id
             WHERE u.account_id = ?1 AND u.hour >= ?2 AND u.hour < ?3
             GROUP BY u.provider, u.token_id ORDER BY u.provider, u.token_id"
        }
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![account, since_hour, until], |r| {
        let key: String = r.get(1)?;
        let name: String = r.get(2)?;
        let (token_id, token_name, agent) = match by {
            GroupBy::Agent => (None, None, Some((!key.is_empty()).then_some(key))),
            GroupBy::Token | GroupBy::Provider => (Some(key), Some(name), None),
        };
        Ok(UsageGroup {
            provider: r.get(0)?,
            token_id,
            token_name,
            agent,
            calls: r.get(3)?,
            refused: r.get(4)?,
            failed: r.get(5)?,
            input_tokens: r.get(6)?,
            cached_input_tokens: r.get(7)?,
            output_tokens: r.get(8)?,
            reasoning_tokens: r.get(9)?,
            spend_usd: Money::from_micros(r.get(10)?),
            fallback_priced_calls: r.get(11)?,
        })
    })?;
    rows.collect()
}

/// One proxied call as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentCall {
    pub provider: String,
    pub at: i64,
    pub method: String,
    pub route: String,
    pub status: i64,
    pub outcome: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Money,
    /// The name of the tool token that made the call (empty if it is gone).
    pub token: String,
    pub latency_ms: i64,
    /// The call's agent label ('' without one).
    pub agent: String,
}

/// The account's latest proxied calls (refusals included), newest first.
pub fn recent_calls(
    conn: &Conn<'_>,
    account: i64,
    limit: u32,
) -> crate::db::Result<Vec<RecentCall>> {
    conn.prepare_cached(
        "SELECT c.provider, c.at, c.method, c.route, c.status, c.outcome, c.model, c.input_tokens,
                c.output_tokens, c.cost_micros, COALESCE(t.name, ''), c.latency_ms, c.agent
         FROM recent_calls c LEFT JOIN tool_tokens t ON t.id = c.token_id AND t.account_id = c.account_id
         WHERE c.account_id = ?1 ORDER BY c.id DESC LIMIT ?2",
    )?
    .query_map(params![account, limit], |r| {
        Ok(RecentCall {
            provider: r.get(0)?,
            at: r.get(1)?,
            method: r.get(2)?,
            route: r.get(3)?,
            status: r.get(4)?,
            outcome: r.get(5)?,
            model: r.get(6)?,
            input_tokens: r.get(7)?,
            output_tokens: r.get(8)?,
            cost: Money::from_micros(r.get(9)?),
            token: r.get(10)?,
            latency_ms: r.get(11)?,
            agent: r.get(12)?,
        })
    })?
    .collect()
}

/// One provider's spend on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySpend {
    /// Unix seconds of the day's start (UTC).
    pub day: i64,
    pub provider: String,
    pub spend: Money,
}

/// Spend per UTC day and provider, for hours starting in `[since, until)`; days without spend are
/// absent. Ordered by day, then provider.
pub fn daily_spend(
    conn: &Conn<'_>,
    account: i64,
    since: i64,
    until: i64,
) -> crate::db::Result<Vec<DailySpend>> {
    conn.prepare_cached(
        "SELECT hour - (hour % 86400) AS day, provider, CAST(SUM(spend_micros) AS BIGINT) FROM usage_hourly
         WHERE account_id = ?1 AND hour >= ?2 AND hour < ?3
         GROUP BY day, provider HAVING SUM(spend_micros) > 0 ORDER BY day, provider",
    )?
    .query_map(params![account, since, until], |r| {
        Ok(DailySpend {
            day: r.get(0)?,
            provider: r.get(1)?,
            spend: Money::from_micros(r.get(2)?),
        })
    })?
    .collect()
}
