//! `keybroker accounts ...`: what the operator does to accounts, on the data directory, with the
//! configured secrets (safe beside a running server: SQLite's busy timeout, one transaction per
//! command). Every change is audited on the account's chain with the actor `operator`; one-time
//! codes are printed to stdout and never logged.

use crate::db::Conn;
use clap::Subcommand;

use crate::accounts::invite::{self, InviteToken};
use crate::accounts::reset::{self, ResetToken};
use crate::accounts::{self, operator, Email, EmailHasher};
use crate::audit::{self, Actor, Outcome};
use crate::config::{ServerSecrets, Settings};
use crate::db::Db;
use crate::timefmt::rfc3339;
use crate::vault::Vault;

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// List every account: id, created, confirmed, disabled, last sign-in, operator, email.
    List,
    /// Confirm an account without its confirmation mail (it can then sign in with its sign-up
    /// password). Only for an address you know is the signer's: that password was never proven
    /// to belong to the mailbox's owner (use reset-password when in doubt).
    Confirm {
        /// The account's email address or id.
        account: String,
    },
    /// Make a one-time invite (7 days) that lets this address sign up under KEYBROKER_SIGNUP=invite.
    Invite {
        /// The address to invite.
        email: String,
    },
    /// Disable an account: it cannot sign in, its sessions end, the proxy refuses its tokens.
    Disable {
        /// The account's email address or id.
        account: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// The account's email address or id.
        account: String,
    },
    /// Print a one-time password-reset link (24 hours) for the account, for when mail cannot reach it.
    ResetPassword {
        /// The account's email address or id.
        account: String,
    },
}

/// What the commands work with: the database, the vault and the pepper.
struct Ctx {
    db: Db,
    vault: std::sync::Arc<Vault>,
    emails: EmailHasher,
    now: i64,
    public_url: Option<String>,
}

pub fn run(command: AccountsCommand, settings: Settings) -> anyhow::Result<()> {
    // A mistyped --data-dir must not quietly become a new, empty database.
    if settings.database.is_none() && !settings.database_path().exists() {
        anyhow::bail!(
            "no database at {} (start `keybroker serve` once, or pass --data-dir)",
            settings.database_path().display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (db, vault) = rt.block_on(crate::startup::open_storage(&settings))?;
    let secrets = ServerSecrets::resolve(
        &settings.secrets,
        &settings.data_dir,
        settings.missing_secrets_policy(),
    )?;
    let ctx = Ctx {
        db,
        vault,
        emails: EmailHasher::new(secrets.email_pepper),
        now: settings.clock.unix(),
        public_url: settings
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned()),
    };
    match command {
        AccountsCommand::List => list(&ctx),
        AccountsCommand::Confirm { account } => confirm(&ctx, &account),
        AccountsCommand::Invite { email } => invite(&ctx, &email),
        AccountsCommand::Disable { account } => disable(&ctx, &account),
        AccountsCommand::Enable { account } => enable(&ctx, &account),
        AccountsCommand::ResetPassword { account } => reset_password(&ctx, &account),
    }
}

fn operator_event(account_id: Option<i64>, action: &str, at: i64) -> audit::Event<'_> {
    audit::Event {
        account_id,
        actor: Actor::Operator,
        action,
        resource: "",
        request_id: "",
        client_addr: "",
        outcome: Outcome::Success,
        at,
    }
}

/// An account id (digits) or an email address, resolved to an existing account's id.
fn resolve(conn: &Conn<'_>, emails: &EmailHasher, which: &str) -> anyhow::Result<i64> {
    let which = which.trim();
    if !which.is_empty() && which.bytes().all(|b| b.is_ascii_digit()) {
        let id: i64 = which.parse()?;
        if operator::exists(conn, id)? {
            return Ok(id);
        }
        anyhow::bail!("no account has id {id}");
    }
    let email = Email::parse(which)
        .map_err(|_| anyhow::anyhow!("{which:?} is not an account id or a valid email address"))?;
    accounts::find_by_email(conn, emails, &email)?
        .map(|a| a.id)
        .ok_or_else(|| anyhow::anyhow!("no account has the address {}", email.as_str()))
}

fn shown(at: Option<i64>) -> String {
    at.map_or_else(|| "-".to_owned(), rfc3339)
}

fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let vault = ctx.vault.clone();
    let rows = ctx.db.read_blocking(|conn| operator::list(conn, &vault))?;
    println!(
        "{:<6} {:<20} {:<20} {:<20} {:<20} {:<8} email",
        "id", "created", "confirmed", "disabled", "last sign-in", "operator"
    );
    for r in &rows {
        println!(
            "{:<6} {:<20} {:<20} {:<20} {:<20} {:<8} {}",
            r.id,
            rfc3339(r.created_at),
            shown(r.confirmed_at),
            shown(r.disabled_at),
            shown(r.last_login_at),
            if r.operator { "yes" } else { "-" },
            r.email
                .as_deref()
                .unwrap_or("(does not open: run keybroker check)"),
        );
    }
    println!("{} account(s)", rows.len());
    Ok(())
}

fn confirm(ctx: &Ctx, which: &str) -> anyhow::Result<()> {
    let changed = ctx.db.write_blocking(|conn| -> anyhow::Result<_> {
        let tx = conn;
        let id = resolve(tx, &ctx.emails, which)?;
        let changed = operator::confirm(tx, id, ctx.now)?;
        if changed {
            audit::append(
                tx,
                &operator_event(Some(id), "signup.confirm.operator", ctx.now),
            )?;
        }
        Ok((id, changed))
    })?;
    match changed {
        (id, true) => {
            println!("account {id} confirmed: it can sign in with the password chosen at sign-up")
        }
        (id, false) => println!("account {id} was already confirmed; nothing changed"),
    }
    Ok(())
}

fn invite(ctx: &Ctx, raw: &str) -> anyhow::Result<()> {
    let email =
        Email::parse(raw).map_err(|_| anyhow::anyhow!("{raw:?} is not a valid email address"))?;
    let token = InviteToken::generate();
    let (token_hash, email_hash) = (token.hash(), ctx.emails.hash(&email));
    let expires = ctx.db.write_blocking(|conn| -> anyhow::Result<_> {
        let tx = conn;
        let expires = invite::issue(tx, &token_hash, &email_hash, ctx.now)?;
        // Chain 0: no account exists for an invite yet (the address is not written down).
        audit::append(tx, &operator_event(None, "signup.invite", ctx.now))?;
        Ok(expires)
    })?;
    println!(
        "invite for {} (one use, until {}):",
        email.as_str(),
        rfc3339(expires)
    );
    println!("{}", token.as_str());
    let signup = match &ctx.public_url {
        Some(base) => format!("{base}/signup"),
        None => "/signup on this keybroker".to_owned(),
    };
    println!("give it to them: they enter it at {signup} (or send it as \"invite\" to POST /api/v1/auth/signup) with this address");
    Ok(())
}

fn disable(ctx: &Ctx, which: &str) -> anyhow::Result<()> {
    let (id, changed) = ctx.db.write_blocking(|conn| -> anyhow::Result<_> {
        let tx = conn;
        let id = resolve(tx, &ctx.emails, which)?;
        let changed = operator::disable(tx, id, ctx.now)?;
        if changed {
            audit::append(tx, &operator_event(Some(id), "account.disable", ctx.now))?;
        }
        Ok((id, changed))
    })?;
    if changed {
        println!("account {id} disabled: it cannot sign in, its sessions ended, and the proxy refuses its tokens within a second");
    } else {
        println!("account {id} was already disabled; nothing changed");
    }
    Ok(())
}

fn enable(ctx: &Ctx, which: &str) -> anyhow::Result<()> {
    let (id, changed) = ctx.db.write_blocking(|conn| -> anyhow::Result<_> {
        let tx = conn;
        let id = resolve(tx, &ctx.emails, which)?;
        let changed = operator::enable(tx, id)?;
        if changed {
            audit::append(tx, &operator_event(Some(id), "account.enable", ctx.now))?;
        }
        Ok((id, changed))
    })?;
    if changed {
        println!("account {id} enabled: it can sign in again and its tokens work");
    } else {
        println!("account {id} was not disabled; nothing changed");
    }
    Ok(())
}

fn reset_password(ctx: &Ctx, which: &str) -> anyhow::Result<()> {
    let token = ResetToken::generate();
    let token_hash = token.hash();
    let id = ctx.db.write_blocking(|conn| -> anyhow::Result<_> {
        let tx = conn;
        let id = resolve(tx, &ctx.emails, which)?;
        reset::issue(tx, id, &token_hash, ctx.now)?;
        audit::append(
            tx,
            &operator_event(Some(id), "password_reset.operator", ctx.now),
        )?;
        Ok(id)
    })?;
    let path = format!("/reset/confirm?token={}", token.as_str());
    println!(
        "one-time reset link for account {id} (until {}):",
        rfc3339(ctx.now + reset::TOKEN_TTL_SECS)
    );
    match &ctx.public_url {
        Some(base) => println!("{base}{path}"),
        None => println!(
            "{path}\n(open that path on this keybroker's address; KEYBROKER_PUBLIC_URL is not set)"
        ),
    }
    println!("choosing a new password there confirms the account if needed and ends every session; it works once");
    Ok(())
}
