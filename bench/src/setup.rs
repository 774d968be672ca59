//! Makes a fresh keybroker ready for proxied calls through its public API: an account, a stored
//! OpenAI key, a ceiling far above anything the benchmark spends, and a tool token.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// The `kbs_` confirmation code in the sign-up mail, waited for (bounded) in the outboxes (on
/// PostgreSQL the mail queue is shared: whichever instance's worker drains it writes the file).
async fn mailed_code(outboxes: &[PathBuf]) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for entries in outboxes.iter().filter_map(|o| std::fs::read_dir(o).ok()) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if let Some(at) = text.find("kbs_") {
                    let code: String = text[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                        .collect();
                    return Ok(code);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no sign-up mail in {outboxes:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs up as `email` (confirming through the mail keybroker writes to `<data_dir>/outbox/`,
/// as it does without SMTP), stores an OpenAI key, sets a generous ceiling and returns a tool
/// token. Used by both `proxy-bench` and `proxy-drills` (whose login storm signs in as `email`).
/// With several instances on one database, `data_dirs` names each (the mail is looked for in all).
pub async fn account(
    base: &str,
    data_dirs: &[PathBuf],
    email: &str,
    password: &str,
) -> Result<String> {
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("sign-up failed: {}", res.status());
    }
    let outboxes: Vec<PathBuf> = data_dirs.iter().map(|d| d.join("outbox")).collect();
    let code = mailed_code(&outboxes).await?;
    let res = client
        .post(format!("{base}/api/v1/auth/signup/confirm"))
        .json(&json!({"token": code, "password": password}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("confirming the sign-up failed: {}", res.status());
    }
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-kb_session="))
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow!("no session cookie"))?
        .to_owned();
    let csrf = res.json::<Value>().await?["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&body)
            .send()
    };
    let key = "sk-proj-BENCHabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
    let stored = call(
        reqwest::Method::POST,
        "/api/v1/keys",
        json!({"provider": "openai", "key": key}),
    )
    .await?;
    if !stored.status().is_success() {
        bail!("could not store the key: {}", stored.status());
    }
    let ceiling = call(
        reqwest::Method::PUT,
        "/api/v1/ceilings/openai",
        json!({"limit_usd": "1000000.00", "period": "none"}),
    )
    .await?;
    if !ceiling.status().is_success() {
        bail!("could not set the ceiling: {}", ceiling.status());
    }
    let res = call(
        reqwest::Method::POST,
        "/api/v1/tokens",
        json!({"name": "bench"}),
    )
    .await?;
    res.json::<Value>().await?["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no token in the answer"))
}
