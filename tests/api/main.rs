//! Integration tests: the real server on port 0, a real SQLite file per test, and (for the CLI)
//! the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth_basic;
mod auth_sessions;
mod cli;
mod health;
mod fake_upstream;
mod helpers;
mod proxy;
mod mail_support;
mod oauth;
mod password_reset;
mod throttling;
mod vault_storage;
