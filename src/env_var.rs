//! Reading settings from the environment: one rule for every module that has settings.

/// The variable's value, unless it is unset or blank (a blank value means "not set").
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
