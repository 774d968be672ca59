//! Provider keys: parsing what users paste ([`material`]), and rows at rest, one vault blob per
//! (account, provider), bound to its row ([`store`]).

pub mod cache;
pub mod material;
pub mod store;
