//! HTTP plumbing shared by every route: request heads compacted out of the read buffer, request
//! ids, the client's address, the access log, the headers on every response, the key-in-URL guard,
//! the request-body deadline, authentication, CSV downloads and TLS.

pub mod access_log;
pub mod auth;
pub mod body_deadline;
pub mod client_addr;
pub mod compact_head;
pub mod download;
pub mod every_response;
pub mod json;
pub mod key_in_url;
pub mod request_id;
pub mod tls;
