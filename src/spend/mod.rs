//! Spend: what each account has spent per provider, and the ceilings that refuse calls beyond it.
//! The ledger decides in memory; the writer persists its events in batches; the store reads them
//! back at start-up (charging holds a crash left behind) and for usage reports.

pub mod budget;
pub mod journal;
pub mod ledger;
pub mod shared;
pub mod store;
pub mod writer;

pub use ledger::{
    CeilingState, Ledger, LedgerRow, Period, Refused, Reservation, ReserveError, Settled, Snapshot,
    SpendEvent, SpendKind, SpendSink, Unrecorded,
};
