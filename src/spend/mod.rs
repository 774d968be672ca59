//! Spend: what each account has spent per provider, and the ceilings that refuse calls beyond it.
//! In memory only; persistence hangs off the ledger's event sink.

pub mod ledger;

pub use ledger::{
    CeilingState, Ledger, LedgerRow, Period, Refused, Reservation, Settled, Snapshot, SpendEvent,
    SpendKind, SpendSink,
};
