//! The fast local upstream: an OpenAI-style chat completion with `usage`, run as its own process
//! (`proxy-bench upstream`) so it can be pinned to a core. The request body picks the variant:
//! `"user": "bench-delay-<ms>"` delays the answer (0, 20 and 60 ms are used), `"stream": true`
//! answers with SSE: [`SSE_CHUNKS`] chunks [`SSE_GAP`] apart, the last one carrying `usage`.
//! Every arm (direct, nginx, keybroker) sends the same bodies, so the upstream's own cost is the
//! same in each.

use std::io::Write as _;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Result;
use futures_util::StreamExt;
use serde_json::Value;

/// Chunks in a streamed answer, the last one with `usage`, then `data: [DONE]`.
pub const SSE_CHUNKS: usize = 64;
/// The upstream's own gap between two chunks.
pub const SSE_GAP: Duration = Duration::from_millis(20);

const CHAT_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;

/// The body a client sends for a plain completion delayed by `delay_ms` at the upstream.
pub fn request_body(delay_ms: u64) -> String {
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"max_tokens":50,"user":"bench-delay-{delay_ms}"}}"#
    )
}

/// The body of a streamed completion. It asks for usage itself, so no proxy needs to rewrite it.
pub const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#;

fn chunk(i: usize) -> web::Bytes {
    let line = if i + 1 < SSE_CHUNKS {
        format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n")
    } else {
        format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{SSE_CHUNKS},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n", SSE_CHUNKS + 12)
    };
    web::Bytes::from(line)
}

async fn answer(body: web::Bytes) -> HttpResponse {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if request["stream"] == Value::Bool(true) {
        // The first chunk goes out at once, each later one SSE_GAP after the one before.
        let chunks = futures_util::stream::iter(0..SSE_CHUNKS).then(|i| async move {
            if i > 0 {
                tokio::time::sleep(SSE_GAP).await;
            }
            Ok::<_, actix_web::Error>(chunk(i))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(chunks);
    }
    let delay_ms = request["user"]
        .as_str()
        .and_then(|u| u.strip_prefix("bench-delay-"))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(CHAT_BODY)
}

/// Serves on 127.0.0.1 (port chosen by the system, printed as `listening port=N` on stdout)
/// with one actix worker, until killed.
pub fn serve() -> Result<()> {
    actix_web::rt::System::new().block_on(async {
        let server = HttpServer::new(|| App::new().default_service(web::to(answer)))
            .workers(1)
            // As a provider's front end does. Without it, on a kept-alive connection, a stream's
            // second chunk waits (Nagle) for the proxy's delayed ACK of the head and first chunk:
            // it arrives ~40 ms after the first and together with the third, so one gap in 63
            // doubles, and every arm's gap p99 (the direct one's included) sat on that double gap
            // rather than on anything a proxy adds.
            .tcp_nodelay(true)
            .backlog(4096)
            .max_connections(100_000)
            .bind(("127.0.0.1", 0))?;
        let port = server.addrs().first().map_or(0, |a| a.port());
        let mut out = std::io::stdout();
        writeln!(out, "listening port={port}")?;
        out.flush()?;
        server.run().await?;
        Ok(())
    })
}
