pub mod metering;
pub mod money;
pub mod spend;
