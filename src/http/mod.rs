//! HTTP plumbing shared by every route: request ids, the access log, the key-in-URL guard,
//! the request-body deadline, authentication and CSV downloads.

pub mod access_log;
pub mod auth;
pub mod body_deadline;
pub mod download;
pub mod key_in_url;
pub mod request_id;
