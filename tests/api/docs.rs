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
    let test_command = head
        .lines()
        .find(|l| l.starts_with("cargo test"))
        .expect("the README's test command in its first lines");
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == test_command),
        "CI runs exactly the README's test command: {test_command}"
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
    assert!(registry.lookup("acme-llm").is_some());
}

/// The README's example key is one the API accepts (not a masked key, in OpenAI's format) and
/// is obviously not a real key.
#[test]
fn the_readme_example_key_is_accepted_and_obviously_fake() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let key = readme
        .split(r#"{"provider": "openai", "key": ""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the README adds an OpenAI key");
    let openai = keybroker::providers::lookup("openai").unwrap();
    assert!(
        keybroker::keys::material::KeyMaterial::parse(openai, key).is_ok(),
        "{key}"
    );
    assert!(key.contains("EXAMPLE"), "{key}");
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The `cargo build ...` command on the one line of `text` that runs it (up to `&&` or a `\`).
fn cargo_build_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("echo"))
        .filter_map(|l| l.split_once("cargo build").map(|(_, rest)| rest))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one cargo build line: {lines:?}");
    let args = lines[0]
        .split("&&")
        .next()
        .unwrap()
        .trim_end_matches('\\')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    format!("cargo build {args}")
}

#[test]
fn ci_builds_the_release_binary_exactly_as_the_dockerfile_does() {
    let docker = cargo_build_line(&repo_file("docker/Dockerfile"));
    assert_eq!(docker, "cargo build --release --locked");
    assert_eq!(cargo_build_line(&repo_file(".ci/run")), docker);
    let dockerfile = repo_file("docker/Dockerfile");
    assert!(
        dockerfile.contains("FROM rust:1.95-"),
        "the toolchain CI uses"
    );
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains(r#"CMD ["keybroker", "healthcheck"]"#));
    let help = crate::cli::keybroker()
        .args(["healthcheck", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "the HEALTHCHECK's subcommand exists");
}

/// Every `KEYBROKER_*` name in `text`.
fn keybroker_vars(text: &str) -> std::collections::BTreeSet<String> {
    regex::Regex::new(r"KEYBROKER_[A-Z0-9_]+")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// The source of the keybroker crate, concatenated.
fn source_text(dir: &std::path::Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_text(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_variable_compose_sets_is_one_keybroker_reads() {
    for file in ["docker/compose.yml", "docker/compose.postgres.yml"] {
        compose_reads_only_known_variables(file);
    }
    // The PostgreSQL variant: two replicas on one database URL given as a secret file, behind a
    // balancer that checks the readiness route keybroker really has.
    let pg = repo_file("docker/compose.postgres.yml");
    assert!(pg.contains("KEYBROKER_DATABASE_URL_FILE: /run/secrets/"));
    assert!(pg.contains("keybroker-1:") && pg.contains("keybroker-2:"));
    let haproxy = repo_file("docker/haproxy.cfg");
    assert!(haproxy.contains("option httpchk GET /readyz"), "{haproxy}");
    let routes = repo_file("src/routes/mod.rs");
    assert!(
        routes.contains("\"/readyz\""),
        "the balancer checks a route that exists"
    );
}

fn compose_reads_only_known_variables(file: &str) {
    let compose = repo_file(file);
    let vars = keybroker_vars(&compose);
    assert!(vars.contains("KEYBROKER_MASTER_KEY_FILE"), "{vars:?}");
    let mut source = String::new();
    source_text(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut source,
    );
    let with_file: Vec<String> = keybroker::secret_files::secret_vars()
        .map(|v| format!("{v}_FILE"))
        .collect();
    let readme = repo_file("README.md");
    for var in &vars {
        assert!(
            source.contains(&format!("\"{var}\""))
                || with_file.contains(var)
                || var.strip_suffix("_FILE").is_some_and(|base| {
                    source.contains(&format!("secret_files::value(\"{base}\")"))
                }),
            "{file} sets {var}, which keybroker does not read"
        );
        let documented = readme.contains(var.as_str())
            || var
                .strip_suffix("_FILE")
                .is_some_and(|base| readme.contains(base));
        assert!(documented, "{var} is in the README's configuration table");
    }
    // The master key reaches the container as a Docker secret, not as a value.
    assert!(compose.contains("/run/secrets/"));
    assert!(!compose.contains("KEYBROKER_MASTER_KEY:"));
}
