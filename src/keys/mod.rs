//! Provider keys at rest: one vault blob per (account, provider), bound to its row.

pub mod store;
