//! The shared secret-format corpus (`../../shared/corpus/secrets.jsonl`): every secret row must
//! lose all of its secrets, every strict clean row must come back byte for byte. Rows we knowingly
//! disagree with are listed in `EXCEPTIONS`, each with its reason.

use redactor::Redactor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `(row index, reason)`. Every entry is a row whose label is right for the upstream scanner's
/// rule it was written for, but wrong for a redactor that applies all rules at once.
const EXCEPTIONS: &[(usize, &str)] = &[
    (19, "sk-ant-api03- + 63 characters: clean only for gitleaks' exact-length rule; keybroker accepts api03 keys of 32-200 characters (the legacy Anthropic shape), so the redactor must find them"),
    (20, "sk-ant-api03- + 96 characters ending BB: as row 19, the legacy Anthropic shape keybroker accepts"),
    (21, "a well-formed sk-ant-admin01 key; clean only for gitleaks' api03 rule, row 22 is the same shape as a secret"),
    (26, "a well-formed sk-ant-api03 key; clean only for gitleaks' admin01 rule, row 17 is this very key as a secret"),
    (128, "`…Token := <40 random chars>`: clean for the Stripe rule, but a random value under a token name is what the generic rule exists for"),
    (432, "`Basic <JWT>`: the JWT is the one row 418 requires redacted; clean only for the Basic-specific check"),
    (561, "`AWS_SECRET_ACCESS_KEY=<42 hex>`: not an AWS-shaped secret (np.aws.2 wants 40), but a secret-named value all the same"),
    (575, "valid Slack user token; noseyparker lists it as a negative only for the bot-token rule np.slack.2"),
    (576, "valid legacy Slack bot token; negative only for np.slack.2"),
    (577, "valid legacy Slack bot token; negative only for np.slack.2"),
    (581, "valid legacy Slack bot token; negative only for np.slack.4"),
    (582, "valid Slack bot token; negative only for np.slack.4"),
    (583, "valid legacy Slack bot token; negative only for np.slack.4"),
    (587, "valid Slack bot token; negative only for np.slack.6"),
    (588, "valid Slack user token; negative only for np.slack.6"),
    (589, "valid Slack user token in a Bearer header; negative only for np.slack.6"),
    (590, "valid Slack user token in ?token=; negative only for np.slack.6"),
];

struct Tally {
    secret_rows: u32,
    secret_ok: u32,
    clean_rows: u32,
    clean_ok: u32,
}

fn corpus_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/secrets.jsonl")
}

#[test]
fn corpus_secrets_are_removed_and_strict_clean_rows_survive() {
    let path = corpus_path();
    let data = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the shared corpus must exist at {} (clone `shared/` beside the repo): {e}",
            path.display()
        )
    });
    let r = Redactor::new();
    let mut by_provider: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut excused = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(line).expect("corpus rows are JSON");
        let text = row["text"].as_str().expect("text is a string");
        let provider = row["provider"].as_str().unwrap_or("?").to_string();
        let out = r.redact(text);
        let t = by_provider.entry(provider.clone()).or_insert(Tally {
            secret_rows: 0,
            secret_ok: 0,
            clean_rows: 0,
            clean_ok: 0,
        });
        let (ok, what) = match row["expect"].as_str() {
            Some("secret") => {
                let secrets: Vec<&str> = row["secrets"]
                    .as_array()
                    .expect("secret rows list their secrets")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let ok = secrets.iter().all(|s| !out.contains(s));
                t.secret_rows += 1;
                t.secret_ok += u32::from(ok);
                (ok, "secret survived")
            }
            Some("clean") if row["rule_regex_matches"] == Value::Bool(false) => {
                let ok = out == text;
                t.clean_rows += 1;
                t.clean_ok += u32::from(ok);
                (ok, "strict clean row changed")
            }
            _ => continue,
        };
        if !ok {
            let msg = format!(
                "row {i} ({provider}, {}): {what}\n  in:  {text:?}\n  out: {out:?}",
                row["rule"]
            );
            if EXCEPTIONS.iter().any(|(n, _)| *n == i) {
                excused.push(msg);
            } else {
                failures.push(msg);
            }
        }
    }
    println!("{:<20} {:>14} {:>16}", "provider", "recall", "precision");
    for (p, t) in &by_provider {
        let pct = |ok: u32, n: u32| {
            if n == 0 {
                "-".to_string()
            } else {
                format!("{ok}/{n} {:.1}%", 100.0 * f64::from(ok) / f64::from(n))
            }
        };
        println!(
            "{p:<20} {:>14} {:>16}",
            pct(t.secret_ok, t.secret_rows),
            pct(t.clean_ok, t.clean_rows)
        );
    }
    for e in &excused {
        println!("excused: {e}");
    }
    let used: Vec<usize> = EXCEPTIONS.iter().map(|(n, _)| *n).collect();
    assert!(
        failures.is_empty(),
        "{} corpus rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        excused.len(),
        used.len(),
        "an exception is listed for a row that now passes: drop it from EXCEPTIONS"
    );
}
