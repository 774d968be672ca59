//! What the per-call key scrubber costs on the proxy's hot path (issue 20): building it from a
//! key, scanning a typical JSON answer, a 200-event SSE stream chunk by chunk, and a 64 KiB
//! body, for a 164-character OpenAI project key (the longest common shape).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redactor::{ScrubStream, Scrubber};
use std::sync::Arc;

const KEY: &str = "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";

const ANSWER: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today? \u00e9 \"quoted\" 50% & more","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

fn event(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

fn scrub(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrub");
    g.bench_function("build_per_call", |b| {
        b.iter(|| Scrubber::new(black_box(KEY.as_bytes())))
    });
    let scrubber = Arc::new(Scrubber::new(KEY.as_bytes()));
    assert!(!scrubber.finds(ANSWER.as_bytes()));
    g.throughput(Throughput::Bytes(ANSWER.len() as u64));
    g.bench_function("json_answer_800b", |b| {
        b.iter(|| {
            let mut s = ScrubStream::new(scrubber.clone());
            let mut out = s.feed(black_box(ANSWER.as_bytes()));
            out.extend(s.finish());
            out
        })
    });
    let events: Vec<String> = (0..200).map(event).collect();
    let total: usize = events.iter().map(String::len).sum();
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("sse_200_events", |b| {
        b.iter(|| {
            let mut s = ScrubStream::new(scrubber.clone());
            let mut n = 0;
            for e in &events {
                n += s.feed(black_box(e.as_bytes())).len();
            }
            n + s.finish().len()
        })
    });
    // What `proxy::headers::response_headers` asks of each forwarded response header.
    let headers = [
        "application/json",
        "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "req_0123456789abcdef0123456789abcdef",
        "312",
        "2024-06-01",
        "no-cache, must-revalidate",
        "Fri, 06 Dec 2026 22:00:00 GMT",
        "9999",
        "29999987",
        "6ms",
    ];
    g.throughput(Throughput::Elements(headers.len() as u64));
    g.bench_function("ten_header_values", |b| {
        b.iter(|| {
            headers
                .iter()
                .filter(|v| scrubber.finds(black_box(v.as_bytes())))
                .count()
        })
    });
    let block = ANSWER.repeat(80);
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("body_64k", |b| {
        b.iter(|| scrubber.scrub(black_box(block.as_bytes())).len())
    });
    g.finish();
}

criterion_group!(benches, scrub);
criterion_main!(benches);
