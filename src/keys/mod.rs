//! Provider keys: parsing what users paste ([`material`]), and rows at rest, one vault blob per
//! (account, provider), bound to its row ([`store`]).

pub mod material;
pub mod store;

/// Spend so far and the ceiling for an account's provider, as decimal USD strings:
/// `(ceiling, spent)`.
///
/// PLACEHOLDER: the spend ledger does not exist yet. The proxy issue wires this to the ledger;
/// until then there is no ceiling and nothing spent, and exports say so honestly.
pub fn spend_for(_account_id: i64, _provider: &str) -> (Option<String>, String) {
    (None, "0.00".to_owned())
}
