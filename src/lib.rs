//! keybroker: a self-hosted BYOK key broker. See `ARCHITECTURE.md` for the map.

pub mod accounts;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod http;
pub mod keys;
pub mod mail;
pub mod metering;
pub mod metrics;
pub mod money;
pub mod providers;
pub mod proxy;
pub mod redact_cmd;
pub mod routes;
pub mod spend;
pub mod startup;
pub mod telemetry;
pub mod timefmt;
pub mod tokens;
pub mod transport;
pub mod vault;
pub mod vault_store;
