//! The proxy: `ANY /proxy/{provider}/{path...}` forwards a tool's call to its provider with the
//! account's own key injected, streams the answer back, and meters it.

pub mod body;
pub mod forward;
pub mod headers;
pub mod interim;
pub mod path;
pub mod upstream;
pub mod upstream_error;

pub use forward::{proxy, upstream_client, Proxy, ProxySettings};
pub use upstream::UpstreamClient;
