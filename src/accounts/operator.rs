//! What the operator does to accounts from the command line (`keybroker accounts ...`, see
//! `accounts_cmd`): list them, disable and enable them, and the bookkeeping the rest of the
//! service keeps for that (last sign-in, the disabled check).

use crate::db::{Conn, Optional as _};
use crate::params;

use crate::vault::Vault;

use super::{email_of, session, signup, AccountError};

/// One account as `accounts list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: i64,
    /// The address, opened from its vault blob; `None` when the blob does not open.
    pub email: Option<String>,
    pub created_at: i64,
    pub confirmed_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub last_login_at: Option<i64>,
    /// The first account created on this database.
    pub operator: bool,
}

/// Every account, oldest first, with its address opened.
pub fn list(conn: &Conn<'_>, vault: &Vault) -> Result<Vec<Summary>, AccountError> {
    let mut stmt = conn.prepare(
        "SELECT id, created_at, confirmed_at, disabled_at, last_login_at, is_operator
         FROM accounts ORDER BY id",
    )?;
    let rows = stmt
        .query_map((), |r| {
            Ok(Summary {
                id: r.get(0)?,
                email: None,
                created_at: r.get(1)?,
                confirmed_at: r.get(2)?,
                disabled_at: r.get(3)?,
                last_login_at: r.get(4)?,
                operator: r.get(5)?,
            })
        })?
        .collect::<crate::db::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for mut row in rows {
        // One damaged blob must not hide every other account from the operator.
        row.email = email_of(conn, vault, row.id).ok().flatten();
        out.push(row);
    }
    Ok(out)
}

/// Whether an account with this id exists.
pub fn exists(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM accounts WHERE id = ?1", [account_id], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// Whether the account is disabled (an unknown id counts as disabled: nothing may act for it).
pub fn is_disabled(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT disabled_at IS NOT NULL FROM accounts WHERE id = ?1",
            [account_id],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(true))
}

/// Disables the account and ends every session of it; its pending sign-up links go too. False
/// when it was disabled already. Its tool tokens stay, refused by the proxy while it is disabled.
pub fn disable(conn: &Conn<'_>, account_id: i64, now: i64) -> crate::db::Result<bool> {
    let n = conn.execute(
        "UPDATE accounts SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
        params![account_id, now],
    )?;
    session::revoke_all(conn, account_id)?;
    signup::revoke_all(conn, account_id)?;
    crate::invalidate::account_changed(conn, account_id)?;
    Ok(n == 1)
}

/// Enables a disabled account. False when it was not disabled.
pub fn enable(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<bool> {
    let n = conn.execute(
        "UPDATE accounts SET disabled_at = NULL WHERE id = ?1 AND disabled_at IS NOT NULL",
        [account_id],
    )?;
    Ok(n == 1)
}

/// Confirms an account without its mail (the operator vouches for the address) and voids its
/// sign-up links. False when it was confirmed already.
pub fn confirm(conn: &Conn<'_>, account_id: i64, now: i64) -> crate::db::Result<bool> {
    let n = conn.execute(
        "UPDATE accounts SET confirmed_at = ?2 WHERE id = ?1 AND confirmed_at IS NULL",
        params![account_id, now],
    )?;
    signup::revoke_all(conn, account_id)?;
    Ok(n == 1)
}

/// Records that a session was just started for the account.
pub fn record_sign_in(conn: &Conn<'_>, account_id: i64, now: i64) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE accounts SET last_login_at = ?2 WHERE id = ?1",
        params![account_id, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{create_unconfirmed_in, find_by_email, Email, EmailHasher};
    use crate::secret::ServerSecret;
    use crate::vault::{Keyring, MasterKeyId};

    fn setup() -> (Conn<'static>, Vault, EmailHasher) {
        let conn = Conn::memory();
        let keyring = Keyring::new(
            vec![(
                MasterKeyId::parse("k1").unwrap(),
                zeroize::Zeroizing::new(vec![7; 32]),
            )],
            None,
        )
        .unwrap();
        let hasher = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        (conn, Vault::new(keyring), hasher)
    }

    #[test]
    fn only_the_first_account_is_the_operators() {
        let (conn, vault, hasher) = setup();
        for (i, who) in ["first@example.com", "second@example.com"]
            .iter()
            .enumerate()
        {
            let email = Email::parse(who).unwrap();
            create_unconfirmed_in(&conn, &vault, &hasher, &email, "$argon2id$x", i as i64).unwrap();
        }
        let all = list(&conn, &vault).unwrap();
        assert_eq!(
            all.iter()
                .map(|a| (a.email.as_deref(), a.operator))
                .collect::<Vec<_>>(),
            vec![
                (Some("first@example.com"), true),
                (Some("second@example.com"), false)
            ]
        );
    }

    #[test]
    fn a_disabled_account_has_no_password_to_sign_in_with() {
        let (conn, vault, hasher) = setup();
        let email = Email::parse("a@example.com").unwrap();
        let id = create_unconfirmed_in(&conn, &vault, &hasher, &email, "$argon2id$x", 1).unwrap();
        crate::accounts::confirm(&conn, id, 2).unwrap();
        assert!(disable(&conn, id, 3).unwrap());
        assert!(!disable(&conn, id, 4).unwrap(), "already disabled");
        let row = find_by_email(&conn, &hasher, &email).unwrap().unwrap();
        assert!(row.disabled);
        assert_eq!(row.password_hash, None);
        assert!(is_disabled(&conn, id).unwrap());
        assert!(enable(&conn, id).unwrap());
        let row = find_by_email(&conn, &hasher, &email).unwrap().unwrap();
        assert_eq!(row.password_hash.as_deref(), Some("$argon2id$x"));
        assert!(!is_disabled(&conn, id).unwrap());
        assert!(is_disabled(&conn, id + 100).unwrap(), "unknown id");
    }
}
