pub mod metering;
pub mod money;
