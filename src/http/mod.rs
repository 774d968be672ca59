//! HTTP plumbing shared by every route: request ids and the access log.

pub mod access_log;
pub mod auth;
pub mod request_id;
