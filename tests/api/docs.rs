//! The README's examples stay true.

use keybroker::metering::prices::{PriceTable, DEFAULT_PRICES_TOML};

#[test]
fn the_readme_price_override_example_loads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block in the README");
    let table = PriceTable::load(DEFAULT_PRICES_TOML, Some(block)).unwrap();
    assert!(table.lookup("openai", "gpt-4o-mini").is_some());
}

#[test]
fn the_readme_starts_with_the_run_and_test_commands() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let head: String = readme.lines().take(6).collect::<Vec<_>>().join("\n");
    assert!(head.contains("cargo run --release -- serve"), "{head}");
    assert!(head.contains("cargo test --workspace"), "{head}");
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.contains("cargo test --workspace"),
        "CI runs the README's test command"
    );
}

#[test]
fn the_readme_providers_file_example_loads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split("KEYBROKER_PROVIDERS=providers.toml")
        .nth(1)
        .expect("the providers section");
    let block = after.split("```\n").nth(1).expect("an example block");
    let registry = keybroker::providers::Registry::load(block).unwrap();
    assert!(registry.lookup("mistral").is_some());
}
