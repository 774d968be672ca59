//! Throughput of `Redactor::redact` on the lines keybroker logs: clean lines (the common case),
//! lines with one secret, and both again with 200 values registered.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redactor::Redactor;

/// Typical lines, about 200 bytes each. The second mentions token counts, which wakes the
/// keyword rules without anything to redact.
const CLEAN: &[&str] = &[
    r#"2026-01-01T12:00:00.123Z  INFO actix_web::middleware::logger: 10.0.0.7 "POST /v1/chat/completions HTTP/1.1" 200 1534 "-" "python-requests/2.31.0" 0.532118 req=0b7c2a4e-9d7f"#,
    r#"2026-01-01T12:00:00.456Z  INFO broker::meter: call done provider=openai model=gpt-4o-mini prompt_tokens=812 completion_tokens=120 cost_micro_usd=1834 elapsed_ms=532 user=17"#,
    r#"2026-01-01T12:00:01.001Z  WARN broker::proxy: upstream status=429 provider=anthropic model=claude-sonnet retry_after_s=20 attempt=2 request_id=3f2504e0-4f89-11d3-9a0c-0305e82c3301"#,
];

const SECRET: &str = r#"2026-01-01T12:00:02.000Z ERROR broker::proxy: upstream rejected key: {"error":{"message":"Incorrect API key provided: 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","type":"invalid_request_error"}}"#;

fn bench_lines(c: &mut Criterion, r: &Redactor, label: &str) {
    let mut g = c.benchmark_group(label);
    for (i, line) in CLEAN.iter().enumerate() {
        assert_eq!(r.redact(line), *line, "bench line {i} must be clean");
        g.throughput(Throughput::Bytes(line.len() as u64));
        g.bench_function(format!("clean_line_{i}"), |b| {
            b.iter(|| r.redact(black_box(line)))
        });
    }
    assert_ne!(r.redact(SECRET), SECRET);
    g.throughput(Throughput::Bytes(SECRET.len() as u64));
    g.bench_function("one_secret_line", |b| {
        b.iter(|| r.redact(black_box(SECRET)))
    });

    // A 64 KiB block of clean lines: sustained throughput rather than per-call overhead.
    let block: String = CLEAN
        .iter()
        .cycle()
        .take(330)
        .map(|l| format!("{l}\n"))
        .collect();
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("clean_block_64k", |b| {
        b.iter(|| r.redact(black_box(&block)))
    });
    g.finish();
}

fn patterns_only(c: &mut Criterion) {
    let r = Redactor::new();
    bench_lines(c, &r, "no_registrations");
}

fn with_200_registered(c: &mut Criterion) {
    let r = Redactor::new();
    let keys: Vec<String> = (0..200)
        .map(|i| format!("provider-key-{i:04}-Q7w9Zx3Lk2Vb8Nm4Tr6Yp1"))
        .collect();
    let _guards: Vec<_> = keys.iter().map(|k| r.register(k.as_bytes())).collect();
    bench_lines(c, &r, "registered_200");
    c.bench_function("register_and_drop", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let key = format!("per-call-key-{i:016}-abcdXYZ");
            drop(r.register(black_box(key.as_bytes())));
        })
    });
}

criterion_group!(benches, patterns_only, with_200_registered);
criterion_main!(benches);
