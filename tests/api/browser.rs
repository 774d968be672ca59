//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs). Without them this test fails; it
//! never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use keybroker::clock::Clock as _;
use serde_json::{json, Value};

use crate::helpers::{session_cookie, TestApp, PASSWORD};
use crate::key_helpers::{anthropic_key, openai_key};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(20);
const XSS_LABEL: &str = "<script>alert(1)</script>";

/// chromedriver, killed when the test ends however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Installs Debian's chromium and chromium-driver when they are missing, once per test run, so
/// the README's test command works on a fresh machine (as the SDK tests create their own venv).
/// Fails loudly if it cannot: the test never skips.
fn ensure_browser() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        if [CHROMEDRIVER, CHROMIUM].iter().all(|b| Path::new(b).exists()) {
            return;
        }
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = apt(&["update", "-qq"])
            && apt(&["install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]);
        assert!(ok, "chromium/chromedriver are missing and apt-get could not install them (install them as root)");
    });
}

async fn start_browser(profile: &Path, downloads: &Path) -> (Driver, Client) {
    ensure_browser();
    for bin in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install chromium chromium-driver (.ci/run does)"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let caps = json!({
        "browserName": "chrome",
        "goog:loggingPrefs": {"browser": "ALL"},
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "safebrowsing.enabled": false,
            },
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match builder {
            Ok(client) => return (driver, client),
            Err(e) if Instant::now() > deadline => panic!("chromedriver session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls `script` (which returns a boolean) until it is true; navigation in between is fine.
async fn until(c: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Value::Bool(true)) = c.execute(script, vec![]).await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

async fn fill(c: &Client, css: &str, text: &str) {
    let el = c.find(Locator::Css(css)).await.unwrap();
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn select(c: &Client, css: &str, value: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .select_by_value(value)
        .await
        .unwrap();
}

/// Loads `path` and waits until its script has run.
async fn open(c: &Client, base: &str, path: &str) {
    c.goto(&format!("{base}{path}")).await.unwrap();
    until(c, path, "return document.readyState === 'complete'").await;
    assert_clean(c, path).await;
}

/// chromedriver's `POST /session/{id}/se/log`: the browser console since the last read.
#[derive(Debug)]
struct ConsoleLog;

impl fantoccini::wd::WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// The console errors (level SEVERE) logged since the last call.
async fn console_errors(c: &Client) -> Vec<String> {
    let entries = c.issue_cmd(ConsoleLog).await.unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// No console error, CSP violation or script error on this page.
async fn assert_clean(c: &Client, page: &str) {
    let errors = console_errors(c).await;
    assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
    let report = js(
        c,
        "const d = document.documentElement; \
         return (d.getAttribute('data-csp-violations') || '') + (d.getAttribute('data-js-errors') || '');",
    )
    .await;
    assert_eq!(
        report,
        json!(""),
        "CSP violations or script errors on {page}"
    );
}

async fn screenshot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), c.screenshot().await.unwrap()).unwrap();
}

async fn screenshots(c: &Client, base: &str, path: &str, name: &str) {
    for (width, height, suffix) in [(1280, 900, "desktop"), (360, 800, "360px")] {
        c.set_window_size(width, height).await.unwrap();
        open(c, base, path).await;
        screenshot(c, &format!("{name}-{suffix}.png")).await;
    }
    c.set_window_size(1280, 900).await.unwrap();
}

/// What widens the page: the document's own overflow, and every element reaching past the
/// viewport that no scroll box holds. An element is held only by an overflow box on its
/// containing-block chain (an absolutely positioned one escapes a static scroll box).
const OVERFLOWING: &str = r#"
const doc = document.documentElement, vw = doc.clientWidth, out = [];
if (doc.scrollWidth > window.innerWidth) out.push('page scrollWidth ' + doc.scrollWidth);
const held = (el) => {
  let pos = getComputedStyle(el).position;
  for (let p = el.parentElement; p && p !== doc; p = p.parentElement) {
    if (pos === 'fixed') return false;
    const cs = getComputedStyle(p);
    if (pos === 'absolute' && cs.position === 'static') continue;
    if (cs.overflowX !== 'visible') return true;
    pos = cs.position;
  }
  return false;
};
for (const el of document.body.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0 || (r.left >= -1 && r.right <= vw + 1) || held(el)) continue;
  out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' ' + (el.getAttribute('class') || '')
    + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
}
return out;
"#;

/// The page open in `c` fits a 360 px wide window: nothing scrolls sideways but scroll boxes.
async fn assert_fits_360(c: &Client, page: &str) {
    assert_eq!(
        js(c, "return window.innerWidth").await,
        json!(360),
        "{page}"
    );
    let overflowing = js(c, OVERFLOWING).await;
    assert_eq!(overflowing, json!([]), "{page} overflows at 360 px");
}

/// `assert_fits_360` on the page as it stands (no reload), then back to the desktop size.
async fn at_360(c: &Client, page: &str) {
    c.set_window_size(360, 800).await.unwrap();
    assert_fits_360(c, page).await;
    c.set_window_size(1280, 900).await.unwrap();
}

/// Clicks `button` (a destructive one), checks it asks first, and confirms.
async fn click_and_confirm(c: &Client, button: &str, password: Option<&str>) {
    click(c, button).await;
    until(
        c,
        "confirmation dialog open",
        "return document.getElementById('confirm').open",
    )
    .await;
    let asks_password = js(
        c,
        "return !document.getElementById('confirm-reauth').hidden",
    )
    .await;
    assert_eq!(asks_password, json!(password.is_some()), "{button}");
    if let Some(pw) = password {
        fill(c, "#confirm-password", pw).await;
    }
    click(c, "#confirm-ok").await;
}

/// The page as it stands (no reload), whole, at 1280 and 360 px wide.
async fn whole_page_screenshots(c: &Client, name: &str) {
    for (width, suffix) in [(1280, "desktop"), (360, "360px")] {
        c.set_window_size(width, 900).await.unwrap();
        let height = js(c, "return document.documentElement.scrollHeight").await;
        let height = u32::try_from(height.as_u64().unwrap()).unwrap();
        c.set_window_size(width, height + 100).await.unwrap();
        screenshot(c, &format!("{name}-{suffix}.png")).await;
    }
    c.set_window_size(1280, 900).await.unwrap();
}

fn secret_texts() -> &'static str {
    "return Array.from(document.querySelectorAll('.key .secret')).map(e => e.textContent);"
}

async fn wait_for_download(dir: &Path) -> PathBuf {
    let deadline = Instant::now() + WAIT;
    loop {
        let done = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        if let Some(p) = done {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the CSV export was not downloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_manages_keys_tokens_and_sessions_in_a_real_browser() {
    let app = TestApp::spawn().await;
    // localhost, not 127.0.0.1: a name Chrome treats as a secure context for `__Host-`/Secure
    // cookies by spec.
    let base = format!("http://localhost:{}", app.port);
    let tmp = tempfile::tempdir().unwrap();
    let (profile, downloads) = (tmp.path().join("profile"), tmp.path().join("downloads"));
    std::fs::create_dir_all(&downloads).unwrap();
    let (_driver, c) = start_browser(&profile, &downloads).await;

    // Sign up: the page says to check the mail; the mailed code and the password confirm the
    // account, and the dashboard opens.
    let email = crate::helpers::unique_email();
    open(&c, &base, "/signup").await;
    screenshot(&c, "signup-desktop.png").await;
    fill(&c, "#email", &email).await;
    fill(&c, "#password", PASSWORD).await;
    click(&c, "form button[type=submit]").await;
    until(
        &c,
        "check-your-mail note after signup",
        "const ok = document.querySelector('#signup .ok'); return !!ok && !ok.hidden",
    )
    .await;
    let token = crate::helpers::take_signup_token(&app.data_dir.path().join("data"), &email).await;
    open(&c, &base, &format!("/signup/confirm?token={token}")).await;
    until(
        &c,
        "the link's token moved out of the URL into the form",
        &format!(
            "return location.search === '' && document.getElementById('signup-token').value === '{token}'"
        ),
    )
    .await;
    fill(&c, "#password", PASSWORD).await;
    click(&c, "form button[type=submit]").await;
    until(
        &c,
        "dashboard after signup",
        "return location.pathname === '/dashboard' && document.readyState === 'complete'",
    )
    .await;
    assert_clean(&c, "/dashboard").await;

    // Add an OpenAI key (with a label that is markup) and an Anthropic key.
    let (openai, anthropic) = (openai_key(), anthropic_key());
    open(&c, &base, "/dashboard/settings/keys").await;
    select(&c, "#add-provider", "anthropic").await;
    fill(&c, "#add-key-value", &openai).await;
    click(&c, "#add-key button[type=submit]").await;
    let hint = js(
        &c,
        "return document.getElementById('add-key-hint').textContent",
    )
    .await;
    assert!(
        hint.as_str().unwrap().contains("keys start with sk-ant-"),
        "the format is checked before submit: {hint}"
    );
    select(&c, "#add-provider", "openai").await;
    fill(&c, "#add-label", XSS_LABEL).await;
    click(&c, "#add-key button[type=submit]").await;
    until(
        &c,
        "first key listed",
        "return document.querySelectorAll('.key').length === 1",
    )
    .await;
    select(&c, "#add-provider", "anthropic").await;
    fill(&c, "#add-key-value", &anthropic).await;
    fill(&c, "#add-label", "work").await;
    click(&c, "#add-key button[type=submit]").await;
    until(
        &c,
        "second key listed",
        "return document.querySelectorAll('.key').length === 2",
    )
    .await;
    assert_clean(&c, "keys").await;

    // Masked, and the markup label is text, not a script.
    let shown = js(&c, secret_texts()).await.to_string();
    assert!(!shown.contains(&openai) && !shown.contains(&anthropic));
    assert!(shown.contains(&format!("sk-proj-…{}", &openai[openai.len() - 4..])));
    assert!(shown.contains(&format!(
        "sk-ant-api03-…{}",
        &anthropic[anthropic.len() - 4..]
    )));
    let labels = js(
        &c,
        "return Array.from(document.querySelectorAll('.key .label')).map(e => e.textContent)",
    )
    .await;
    assert!(labels.as_array().unwrap().contains(&json!(XSS_LABEL)));
    assert!(c.get_alert_text().await.is_err(), "no alert opened");
    assert_eq!(
        js(&c, "return document.querySelectorAll('.key script').length").await,
        json!(0)
    );

    // Reveal: a wrong password is refused and nothing is shown; the right one shows the key.
    let item = format!(".key[data-key-id='{}']", key_id(&c, "openai").await);
    click(&c, &format!("{item} [data-toggle^=reveal]")).await;
    fill(
        &c,
        &format!("{item} form.reveal input[name=password]"),
        "not my password at all",
    )
    .await;
    assert_clean(&c, "keys").await;
    click(&c, &format!("{item} form.reveal button[type=submit]")).await;
    until(
        &c,
        "reveal refused",
        &format!("return !document.querySelector(\"{item} form.reveal .error\").hidden"),
    )
    .await;
    let secret_js = format!("return document.querySelector(\"{item} .secret\").textContent");
    // The refused re-auth is the one console error expected: the browser logs every 4xx fetch.
    let errors = console_errors(&c).await;
    assert!(
        errors.len() == 1 && errors[0].contains("/api/v1/auth/reauth") && errors[0].contains("401"),
        "{errors:?}"
    );
    assert!(!js(&c, &secret_js).await.as_str().unwrap().contains(&openai));
    fill(
        &c,
        &format!("{item} form.reveal input[name=password]"),
        PASSWORD,
    )
    .await;
    click(&c, &format!("{item} form.reveal button[type=submit]")).await;
    until(
        &c,
        "key revealed",
        &format!("{secret_js} === {}", json!(openai)),
    )
    .await;
    assert_eq!(
        js(
            &c,
            &format!("return document.querySelector(\"{item} .copy\").hidden")
        )
        .await,
        json!(false)
    );
    screenshot(&c, "keys-revealed.png").await;

    // Rotate the OpenAI key (something that is not an OpenAI key is caught before it is sent).
    let rotated = format!("{}ZZZZ", openai_key());
    click(&c, &format!("{item} [data-toggle^=rotate]")).await;
    fill(
        &c,
        &format!("{item} form[data-method=PUT] input[name=key]"),
        "xoxb-0000000000-not-an-openai-key",
    )
    .await;
    click(
        &c,
        &format!("{item} form[data-method=PUT] button[type=submit]"),
    )
    .await;
    let message = js(&c, &format!("return document.querySelector(\"{item} form[data-method=PUT] input\").validationMessage")).await;
    assert!(
        message.as_str().unwrap().contains("keys start with sk-"),
        "{message}"
    );
    fill(
        &c,
        &format!("{item} form[data-method=PUT] input[name=key]"),
        &rotated,
    )
    .await;
    click(
        &c,
        &format!("{item} form[data-method=PUT] button[type=submit]"),
    )
    .await;
    until(
        &c,
        "rotated key listed",
        &format!(
            "return document.querySelector(\"{item} .secret\")?.textContent === 'sk-proj-…ZZZZ'"
        ),
    )
    .await;

    // Set a ceiling for OpenAI; the dashboard draws its bar.
    select(&c, "#ceil-provider", "openai").await;
    fill(&c, "#ceil-limit", "5.00").await;
    select(&c, "#ceil-period", "monthly").await;
    click(&c, "#set-ceiling button[type=submit]").await;
    until(&c, "ceiling listed", "return document.getElementById('ceilings').textContent.includes('OpenAI: $0.00 of $5.00 (monthly)')").await;

    // Raising it asks for the password: the API refuses without a fresh re-auth, the page asks.
    // (The reveal above opened a re-auth window; let it close.)
    app.clock.advance(time::Duration::minutes(11));
    select(&c, "#ceil-provider", "openai").await;
    fill(&c, "#ceil-limit", "10.00").await;
    click(&c, "#set-ceiling button[type=submit]").await;
    until(
        &c,
        "password asked to raise the ceiling",
        "return document.getElementById('confirm').open && !document.getElementById('confirm-reauth').hidden",
    )
    .await;
    screenshot(&c, "confirm-reauth.png").await;
    let errors = console_errors(&c).await;
    assert!(
        errors.len() == 1
            && errors[0].contains("/api/v1/ceilings/openai")
            && errors[0].contains("403"),
        "the refused raise is the one console error: {errors:?}"
    );
    fill(&c, "#confirm-password", PASSWORD).await;
    click(&c, "#confirm-ok").await;
    until(&c, "ceiling raised", "return document.readyState === 'complete' && document.getElementById('ceilings').textContent.includes('OpenAI: $0.00 of $10.00 (monthly)')").await;
    at_360(&c, "keys, with a ceiling").await;
    open(&c, &base, "/dashboard").await;
    assert_eq!(
        js(&c, "return document.querySelectorAll('.bars meter').length").await,
        json!(1)
    );

    // Create a token for two providers that expires in a week: shown once, with the SDK snippet
    // for each provider, and listed at once (the page does not reload).
    open(&c, &base, "/dashboard/settings/tokens").await;
    js(&c, "window.sameDocument = true; return null").await;
    fill(&c, "#token-name", "ci agent").await;
    fill(&c, "#token-limit", "2.50").await;
    click(&c, "#create-token input[value=openai]").await;
    click(&c, "#create-token input[value=anthropic]").await;
    select(&c, "#token-expires", "7").await;
    click(&c, "#create-token button[type=submit]").await;
    until(
        &c,
        "token shown",
        "return !document.getElementById('new-token').hidden",
    )
    .await;
    until(
        &c,
        "token listed",
        "return document.querySelectorAll('#token-list tr').length === 1",
    )
    .await;
    assert_eq!(
        js(&c, "return window.sameDocument === true").await,
        json!(true),
        "listed without a reload"
    );
    let row = js(
        &c,
        "return Array.from(document.querySelectorAll('#token-list td')).map(e => e.textContent)",
    )
    .await;
    assert_eq!(row[0], json!("ci agent"));
    assert_eq!(row[1], json!("OpenAI, Anthropic"));
    assert_eq!(row[2], json!("any method and path"));
    assert_eq!(row[3], json!("$0.00 of $2.50 ($2.50 left)"));
    let api_tokens: Value = app
        .get("/api/v1/tokens", None)
        .header("Cookie", browser_session(&c).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        api_tokens["tokens"][0]["providers"],
        json!(["anthropic", "openai"]),
        "listed by id"
    );
    // A week from the browser's clock (the test server's stands 11 minutes ahead of it), and
    // listed the way the server shows times.
    let expires_at = api_tokens["tokens"][0]["expires_at"].as_str().unwrap();
    let in_a_week = keybroker::timefmt::parse_rfc3339(expires_at).unwrap() - app.clock.unix();
    assert!(
        (7 * 86_400 - 15 * 60..7 * 86_400).contains(&in_a_week),
        "expires in a week: {expires_at}"
    );
    assert_eq!(row[5], json!(expires_at.replacen('T', " ", 1)));
    assert_eq!(api_tokens["tokens"][0]["spend_limit_usd"], "2.50");
    at_360(&c, "tokens, just created").await;
    whole_page_screenshots(&c, "tokens-created").await;
    let token = js(
        &c,
        "return document.getElementById('new-token-value').textContent",
    )
    .await;
    let token = token.as_str().unwrap().to_owned();
    assert!(token.starts_with("kb_"), "{token}");
    let snippet = js(
        &c,
        "return document.getElementById('new-token-snippet').textContent",
    )
    .await;
    assert!(snippet.as_str().unwrap().contains(&token));
    for provider in ["openai", "anthropic"] {
        assert!(snippet
            .as_str()
            .unwrap()
            .contains(&format!("{base}/proxy/{provider}")));
    }
    open(&c, &base, "/dashboard/settings/tokens").await;
    let listed = js(
        &c,
        "return document.querySelector('main table').textContent",
    )
    .await;
    assert!(listed.as_str().unwrap().contains("ci agent"));
    assert!(
        !listed.as_str().unwrap().contains(&token),
        "the token is shown only once"
    );
    // Revoking asks first; cancelling changes nothing.
    let revoke = "tbody button[data-call^='DELETE /api/v1/tokens/']";
    assert_eq!(
        js(
            &c,
            &format!("return document.querySelector(\"{revoke}\").classList.contains('danger')")
        )
        .await,
        json!(true),
        "a destructive button looks destructive"
    );
    click(&c, revoke).await;
    until(
        &c,
        "revoke asks first",
        "return document.getElementById('confirm').open",
    )
    .await;
    screenshot(&c, "confirm-revoke.png").await;
    let message = js(
        &c,
        "return document.getElementById('confirm-message').textContent",
    )
    .await;
    assert!(message.as_str().unwrap().contains("ci agent"), "{message}");
    click(&c, "#confirm-cancel").await;
    until(
        &c,
        "dialog closed",
        "return !document.getElementById('confirm').open",
    )
    .await;
    assert_eq!(
        js(
            &c,
            "return document.querySelectorAll('#token-list tr').length"
        )
        .await,
        json!(1),
        "cancelled: still listed"
    );
    click_and_confirm(&c, revoke, None).await;
    until(&c, "token revoked", "return document.readyState === 'complete' && document.getElementById('token-table').hidden && document.querySelectorAll('#token-list tr').length === 0").await;

    // Export CSV: a file is downloaded, with the masks and no key.
    open(&c, &base, "/dashboard/settings/keys").await;
    click(&c, "a[href='/api/v1/keys/export?format=csv']").await;
    let csv = std::fs::read_to_string(wait_for_download(&downloads).await).unwrap();
    assert!(csv.lines().count() == 3, "header and two keys: {csv}");
    assert!(csv.contains("sk-proj-…ZZZZ") && csv.contains("anthropic"));
    assert!(!csv.contains(&rotated) && !csv.contains(&anthropic));

    // A second session (another device) is revoked from the sessions page.
    let other = session_cookie(app.login(&email, PASSWORD).await.headers()).unwrap();
    open(&c, &base, "/dashboard/settings/sessions").await;
    assert_eq!(
        js(&c, "return document.querySelectorAll('tbody tr').length").await,
        json!(2)
    );
    at_360(&c, "sessions, two of them").await;
    click_and_confirm(&c, "tbody tr:not(.current) button[data-call]", None).await;
    until(
        &c,
        "one session left",
        "return document.querySelectorAll('tbody tr').length === 1",
    )
    .await;
    let res = app
        .get("/api/v1/auth/session", None)
        .header("Cookie", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the revoked session no longer works");

    // The audit page lists what happened, and filters.
    open(&c, &base, "/dashboard/audit").await;
    let audit = js(
        &c,
        "return document.querySelector('main table').textContent",
    )
    .await;
    for action in [
        "key.add",
        "key.reveal",
        "key.rotate",
        "keys.export",
        "ceiling.set",
        "token.create",
        "token.revoke",
        "session.revoke",
    ] {
        assert!(
            audit.as_str().unwrap().contains(action),
            "{action} in the audit page"
        );
    }
    fill(&c, "#f-action", "key.add").await;
    click(&c, "form.filters button[type=submit]").await;
    until(
        &c,
        "filtered",
        "return location.search.includes('action=key.add') && document.readyState === 'complete'",
    )
    .await;
    let actions = js(&c, "return Array.from(document.querySelectorAll('tbody tr td:nth-child(2)')).map(e => e.textContent)").await;
    assert_eq!(actions, json!(["key.add", "key.add"]));

    // Some spend and two calls (one refused), so the overview has something to draw.
    seed_spend(&app).await;
    open(&c, &base, "/dashboard").await;
    assert_eq!(
        js(&c, "return document.querySelector('.bars meter').value").await,
        json!(32)
    );
    assert_eq!(
        js(
            &c,
            "return document.querySelectorAll('#calls tbody tr').length"
        )
        .await,
        json!(2)
    );
    assert_eq!(
        js(
            &c,
            "return document.querySelectorAll('#refusals li').length"
        )
        .await,
        json!(1)
    );

    // The spend page: every provider's spend this period, a bar segment per provider and day,
    // and the recent calls with their model and tokens.
    open(&c, &base, "/dashboard/spend").await;
    let period = js(&c, "return document.getElementById('period').textContent").await;
    let period = period.as_str().unwrap();
    assert!(
        period.contains("OpenAI: $3.20 of $10.00 (monthly)"),
        "{period}"
    );
    assert!(
        period.contains("Anthropic: $0.50 spent, no ceiling"),
        "{period}"
    );
    assert_eq!(
        js(
            &c,
            "return document.querySelectorAll('#over-time svg rect.bar').length"
        )
        .await,
        json!(3)
    );
    assert_eq!(
        js(
            &c,
            "return Array.from(document.querySelectorAll('.legend li')).map(e => e.textContent)"
        )
        .await,
        json!(["OpenAI", "Anthropic"])
    );
    let calls = js(
        &c,
        "return Array.from(document.querySelectorAll('#calls tbody tr')).map(e => e.textContent)",
    )
    .await;
    assert_eq!(calls.as_array().unwrap().len(), 2);
    assert!(
        calls[0].as_str().unwrap().contains("gpt-4o-mini"),
        "{calls}"
    );
    assert!(calls[0].as_str().unwrap().contains("1200 → 350"), "{calls}");
    assert!(calls[0].as_str().unwrap().contains("OpenAI"), "{calls}");
    whole_page_screenshots(&c, "spend").await;

    // Resetting spend and removing the ceiling both ask first, and for the password.
    open(&c, &base, "/dashboard/settings/keys").await;
    click_and_confirm(
        &c,
        "#ceilings li[data-provider=openai] button[data-call$='/reset']",
        Some(PASSWORD),
    )
    .await;
    until(&c, "spend reset", "return document.readyState === 'complete' && document.getElementById('ceilings').textContent.includes('OpenAI: $0.00 of $10.00 (monthly)')").await;
    click_and_confirm(
        &c,
        "#ceilings li[data-provider=openai] button[data-call^='DELETE']",
        Some(PASSWORD),
    )
    .await;
    until(&c, "ceiling removed", "return document.readyState === 'complete' && !document.getElementById('ceilings').textContent.includes('OpenAI: $')").await;

    // Remove asks for the password; the key is gone after it.
    open(&c, &base, "/dashboard/settings/keys").await;
    let item = format!(".key[data-key-id='{}']", key_id(&c, "anthropic").await);
    click(&c, &format!("{item} [data-toggle^=remove]")).await;
    fill(
        &c,
        &format!("{item} form.remove input[name=password]"),
        PASSWORD,
    )
    .await;
    click(&c, &format!("{item} form.remove button[type=submit]")).await;
    until(
        &c,
        "key removed",
        "return document.readyState === 'complete' && document.querySelectorAll('.key').length === 1",
    )
    .await;

    for (path, name) in [
        ("/dashboard/audit", "audit-desktop.png"),
        ("/dashboard/settings/sessions", "sessions-desktop.png"),
    ] {
        open(&c, &base, path).await;
        screenshot(&c, name).await;
    }
    screenshots(&c, &base, "/dashboard/settings/keys", "keys").await;
    screenshots(&c, &base, "/dashboard", "dashboard").await;
    // Forgot password: the mailed link's token leaves the address bar at once, and the form
    // still redeems it; then the new password signs in.
    let reset = keybroker::accounts::reset::ResetToken::generate();
    let (hash, now) = (reset.hash(), app.clock.unix());
    app.sql(move |conn| {
        let account: i64 = conn.query_row("SELECT id FROM accounts", (), |r| r.get(0))?;
        keybroker::accounts::reset::issue(conn, account, &hash, now)
    })
    .await;
    open(
        &c,
        &base,
        &format!("/reset/confirm?token={}", reset.as_str()),
    )
    .await;
    assert_eq!(
        js(&c, "return location.href").await,
        json!(format!("{base}/reset/confirm"))
    );
    let new_password = "a brand new passphrase for the browser";
    fill(&c, "#password", new_password).await;
    click(&c, "#reset-confirm button[type=submit]").await;
    until(
        &c,
        "login after reset",
        "return location.pathname === '/login' && document.readyState === 'complete'",
    )
    .await;
    fill(&c, "#email", &email).await;
    fill(&c, "#password", new_password).await;
    click(&c, "form button[type=submit]").await;
    until(
        &c,
        "dashboard after login",
        "return location.pathname === '/dashboard' && document.readyState === 'complete'",
    )
    .await;

    // Every page fits a 360 px wide screen: signed in, then signed out.
    c.set_window_size(360, 800).await.unwrap();
    for path in [
        "/dashboard",
        "/dashboard/spend",
        "/dashboard/settings/keys",
        "/dashboard/settings/tokens",
        "/dashboard/settings/sessions",
        "/dashboard/audit",
    ] {
        open(&c, &base, path).await;
        assert_fits_360(&c, path).await;
    }
    click(&c, "[data-logout]").await;
    until(
        &c,
        "signed out",
        "return location.pathname === '/login' && document.readyState === 'complete'",
    )
    .await;
    for path in ["/login", "/reset", "/reset/confirm"] {
        open(&c, &base, path).await;
        assert_fits_360(&c, path).await;
    }

    assert_clean(&c, "end").await;
    c.close().await.unwrap();
}

/// The browser's session cookie, as `name=value`, for API calls beside it.
async fn browser_session(c: &Client) -> String {
    let cookie = c.get_named_cookie("__Host-kb_session").await.unwrap();
    format!("{}={}", cookie.name(), cookie.value())
}

/// The id of the listed key for `provider`.
async fn key_id(c: &Client, provider: &str) -> String {
    let script = format!(
        "return Array.from(document.querySelectorAll('.key')).find(k => k.querySelector('.provider').dataset.provider === '{provider}').dataset.keyId"
    );
    js(c, &script).await.as_str().unwrap().to_owned()
}

/// $3.20 settled against the OpenAI ceiling, and two recent calls, one of them refused.
async fn seed_spend(app: &TestApp) {
    let account: i64 = app
        .sql(|conn| conn.query_row("SELECT id FROM accounts", (), |r| r.get(0)))
        .await;
    let spent = keybroker::money::Money::from_micros(3_200_000);
    let proxy = &app.state.proxy;
    let held = match proxy.ledger.reserve(account, "openai", spent) {
        // Several instances on PostgreSQL: the instance leases its slice of the ceiling first.
        Err(keybroker::spend::ReserveError::NeedsLease { want }) => {
            let shared = proxy
                .shared
                .as_ref()
                .expect("a lease is asked only when shared");
            assert!(shared
                .lease(account, "openai", want)
                .await
                .unwrap()
                .is_none());
            proxy.ledger.reserve(account, "openai", spent).unwrap()
        }
        other => other.unwrap(),
    };
    held.settle(spent);
    let now = app.clock.unix();
    app.sql(move |conn| {
        // Oldest first: the list shows the newest (the successful call) on top.
        for (status, outcome, cost, input, output) in
            [(429, "refused", 0, 0, 0), (200, "ok", 3_200_000, 1200, 350)]
        {
            conn.execute(
                "INSERT INTO recent_calls (account_id, provider, at, method, route, status, outcome, model, input_tokens, output_tokens, cost_micros)
                 VALUES (?1, 'openai', ?2, 'POST', '/v1/chat/completions', ?3, ?4, 'gpt-4o-mini', ?5, ?6, ?7)",
                keybroker::params![account, now, status, outcome, input, output, cost],
            )?;
        }
        // Spend per day for the chart: OpenAI today and two days ago, Anthropic yesterday.
        let today = now - now.rem_euclid(86_400);
        for (provider, day, micros) in [
            ("openai", today, 3_200_000),
            ("openai", today - 2 * 86_400, 1_000_000),
            ("anthropic", today - 86_400, 500_000),
        ] {
            conn.execute(
                "INSERT INTO usage_hourly (account_id, provider, hour, calls, spend_micros) VALUES (?1, ?2, ?3, 1, ?4)",
                keybroker::params![account, provider, day, micros],
            )?;
        }
        Ok(())
    })
    .await;
    let anthropic = keybroker::money::Money::from_micros(500_000);
    app.state
        .proxy
        .ledger
        .reserve(account, "anthropic", anthropic)
        .unwrap()
        .settle(anthropic);
}
