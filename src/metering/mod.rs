//! Metering (placeholder)
pub mod sse;
