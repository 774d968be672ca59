//! Integration tests: the real server on port 0, a real SQLite file per test, and (for the CLI)
//! the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod auth_basic;
mod auth_sessions;
mod backup;
mod browser;
mod ceilings;
mod cli;
mod copy_db;
mod crash;
mod dashboard_pages;
mod discovery;
mod docs;
mod drills;
mod fake_upstream;
mod first_hour;
mod forwarded;
mod health;
mod helpers;
mod hostile_request;
mod hostile_upstream;
mod isolation;
mod key_helpers;
mod keys;
mod log_redaction;
mod mail_support;
mod metrics;
mod oauth;
mod operator_accounts;
mod ops;
mod password_reset;
pub mod pg_cluster;
mod pg_tls;
mod providers_file;
mod providers_more;
mod proxy;
mod redact_cli;
mod remote;
mod response_headers;
mod rotation;
mod scale_out;
mod signup_uniform;
mod throttling;
mod tls;
mod tokens;
mod vault_storage;
