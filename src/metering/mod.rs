//! Metering: what a provider call costs. Prices ([`prices`]), usage read from responses and streams
//! ([`usage`], on top of the SSE observer in [`sse`]), and the worst-case estimate reserved before a
//! call is sent ([`estimate`]). Pure code: no IO, no clock, no shared state.

pub mod estimate;
pub mod prices;
pub mod sse;
pub mod unique_json;
pub mod usage;

pub use estimate::{estimate_request, estimate_tokens, Estimate, EstimateConfig, OutputBound};
pub use prices::{Cost, PriceError, PriceRow, PriceTable};
pub use sse::{SseEvent, SseFrameFilter, SseItem, SseParser};
pub use usage::{Dialect, Framing, StreamMeter, StreamUsage, Usage};
