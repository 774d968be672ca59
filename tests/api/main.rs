//! Integration tests: the real server on port 0, a real SQLite file per test, and (for the CLI)
//! the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod auth_basic;
mod cli;
mod health;
mod helpers;
mod key_helpers;
mod keys;
mod tokens;
mod vault_storage;
