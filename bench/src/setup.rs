//! Makes a fresh keybroker ready for proxied calls through its public API: an account, a stored
//! OpenAI key, a ceiling far above anything the benchmark spends, and a tool token.

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// Signs up as `email`, stores an OpenAI key, sets a generous ceiling and returns a tool token.
/// Used by both `proxy-bench` and `proxy-drills` (whose login storm signs in as `email`).
pub async fn account(base: &str, email: &str, password: &str) -> Result<String> {
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("sign-up failed: {}", res.status());
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
        json!({"limit_usd": "1000000.00"}),
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
