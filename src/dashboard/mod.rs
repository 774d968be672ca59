//! The browser dashboard: server-rendered askama pages that read through the same library
//! functions as the JSON API, plus one CSS and one JS file served from the binary. Every state
//! change goes through `/api/v1` (the JS sends the session's CSRF token from a `<meta>` tag), so
//! the pages add no second write path to keep secure.
//!
//! Reset links: `/reset/confirm?token=…` is served with `Referrer-Policy: no-referrer` and
//! `no-store`; the server never writes the token into the page, and `app.js` reads it from the
//! URL into memory and replaces the URL with the bare `/reset/confirm` (`history.replaceState`)
//! before anything else runs, so it leaves the address bar and history at once.

mod chart;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;

use crate::accounts::{self, password, session};
use crate::audit;
use crate::error::ApiError;
use crate::http::auth::Authenticated;
use crate::keys::store as key_store;
use crate::money::Money;
use crate::providers::PROVIDERS;
use crate::routes::auth::{insecure_transport_warning, signup_outbox_message};
use crate::routes::password_reset::RESET_UNAVAILABLE;
use crate::spend::store::{self as spend_store, RecentCall, UsageRow};
use crate::spend::writer::period_name;
use crate::spend::CeilingState;
use crate::startup::AppState;
use crate::timefmt::rfc3339;

/// A time as pages show it: RFC 3339 with a space for the `T`, which reads (and wraps) better.
/// Every time on every page goes through here (and `app.js`'s `shown` for rows it adds).
fn shown(unix: i64) -> String {
    rfc3339(unix).replacen('T', " ", 1)
}

/// `shown`, or "never" for a time that has not happened.
fn shown_or_never(unix: Option<i64>) -> String {
    unix.map(shown).unwrap_or_else(|| "never".into())
}

/// A UTC day as pages show it: the date part of `shown`.
fn shown_day(unix: i64) -> String {
    let mut s = shown(unix);
    s.truncate(10);
    s
}

/// The page CSP: only our own files, no inline script or style, no framing, no plugins.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const APP_CSS: &str = include_str!("../../static/app.css");
const APP_JS: &str = include_str!("../../static/app.js");
const FAVICON: &str = include_str!("../../static/favicon.svg");

const RECENT_CALLS: u32 = 20;
/// Days the spend page's chart and totals cover, today (UTC) included.
const SPEND_DAYS: i64 = 30;
const AUDIT_PAGE: u32 = 100;

/// A page route: `GET`, and `HEAD` (the same headers, no body).
fn get() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", get().to(root))
        .route("/static/app.css", get().to(css))
        .route("/static/app.js", get().to(js))
        .route("/static/favicon.svg", get().to(favicon))
        .route("/login", get().to(login))
        .route("/signup", get().to(signup))
        .route("/signup/confirm", get().to(signup_confirm))
        .route("/reset", get().to(reset))
        .route("/reset/confirm", get().to(reset_confirm))
        .route("/dashboard", get().to(overview))
        .route("/dashboard/spend", get().to(spend_page))
        .route("/dashboard/settings/keys", get().to(keys))
        .route("/dashboard/settings/tokens", get().to(tokens))
        .route("/dashboard/settings/sessions", get().to(sessions))
        .route("/dashboard/audit", get().to(audit_page));
}

/// How a page may be cached and what it may send as a referrer.
#[derive(Clone, Copy)]
enum Exposure {
    /// Public, no secrets (login, signup).
    Public,
    /// Account data or secrets: never stored by a cache.
    Private,
    /// Carries a mailed one-time token (reset, sign-up confirmation) in its URL: no store, no
    /// referrer.
    MailedLink,
}

fn page(html: Result<String, askama::Error>, exposure: Exposure) -> Result<HttpResponse, ApiError> {
    let body = html.map_err(ApiError::internal)?;
    let mut res = HttpResponse::build(StatusCode::OK);
    res.content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP));
    match exposure {
        Exposure::Public => {}
        Exposure::Private => {
            res.insert_header((header::CACHE_CONTROL, "no-store"));
        }
        Exposure::MailedLink => {
            res.insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header(("Referrer-Policy", "no-referrer"));
        }
    }
    Ok(res.body(body))
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn css() -> HttpResponse {
    asset(APP_CSS, "text/css; charset=utf-8")
}

async fn js() -> HttpResponse {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn favicon() -> HttpResponse {
    asset(FAVICON, "image/svg+xml")
}

async fn root() -> HttpResponse {
    redirect("/dashboard")
}

/// What every page's layout needs.
struct Layout {
    title: &'static str,
    /// Empty on public pages.
    csrf: String,
    email: String,
    /// The nav entry to mark as current.
    current: &'static str,
}

impl Layout {
    fn public(title: &'static str) -> Self {
        Self {
            title,
            csrf: String::new(),
            email: String::new(),
            current: "",
        }
    }

    async fn of(
        state: &AppState,
        auth: &Authenticated,
        title: &'static str,
        current: &'static str,
    ) -> Result<Self, ApiError> {
        let (vault, account_id) = (state.vault.clone(), auth.account_id);
        let email = state
            .db
            .read(move |conn| {
                accounts::email_of(conn, &vault, account_id).map_err(ApiError::internal)
            })
            .await?
            .unwrap_or_default();
        Ok(Self {
            title,
            csrf: auth.csrf_token.clone(),
            email,
            current,
        })
    }

    fn is(&self, nav: &str) -> bool {
        self.current == nav
    }
}

struct OAuthButton {
    id: &'static str,
    name: &'static str,
}

fn oauth_buttons(state: &AppState) -> Vec<OAuthButton> {
    // OAuth needs the public URL for its redirect; without it the start route refuses.
    if state.public_url.is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if state.oauth.github.is_some() {
        out.push(OAuthButton {
            id: "github",
            name: "GitHub",
        });
    }
    if state.oauth.google.is_some() {
        out.push(OAuthButton {
            id: "google",
            name: "Google",
        });
    }
    out
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    signup: bool,
    oauth: Vec<OAuthButton>,
    /// Why signing in will not stick (plain HTTP from another machine), when it applies.
    transport_warning: Option<&'static str>,
    /// `/signup` only: who may sign up here, and what "check your mail" means on this server.
    policy: &'static str,
    done: String,
    /// The password rule on `/signup`, as `accounts::password::validate` applies it.
    min_chars: usize,
    max_chars: usize,
}

/// Someone already signed in has nothing to do on `/login` or `/signup`.
async fn login(
    req: HttpRequest,
    auth: Option<Authenticated>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if auth.is_some() {
        return Ok(redirect("/dashboard"));
    }
    let p = LoginPage {
        layout: Layout::public("Sign in"),
        signup: false,
        oauth: oauth_buttons(&state),
        transport_warning: insecure_transport_warning(&req),
        policy: state.signup_policy.as_str(),
        done: String::new(),
        min_chars: password::MIN_CHARS,
        max_chars: password::MAX_CHARS,
    };
    page(p.render(), Exposure::Public)
}

async fn signup(
    req: HttpRequest,
    auth: Option<Authenticated>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if auth.is_some() {
        return Ok(redirect("/dashboard"));
    }
    // Configuration facts only, the same for every visitor and every address.
    let done = match state.mail_outbox.as_deref() {
        Some(dir) => signup_outbox_message(dir),
        None => "Check your mail: the next step is in a message to this address. A new account \
                 is confirmed with the link in it."
            .to_owned(),
    };
    let p = LoginPage {
        layout: Layout::public("Create an account"),
        signup: true,
        oauth: oauth_buttons(&state),
        transport_warning: insecure_transport_warning(&req),
        policy: state.signup_policy.as_str(),
        done,
        min_chars: password::MIN_CHARS,
        max_chars: password::MAX_CHARS,
    };
    page(p.render(), Exposure::Public)
}

#[derive(Template)]
#[template(path = "signup_confirm.html")]
struct SignupConfirmPage {
    layout: Layout,
}

/// Like the reset page: the token stays in the query string only until `app.js` moves it into
/// the form; it is never rendered, and the page sends no referrer.
async fn signup_confirm() -> Result<HttpResponse, ApiError> {
    let p = SignupConfirmPage {
        layout: Layout::public("Confirm your account"),
    };
    page(p.render(), Exposure::MailedLink)
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage {
    layout: Layout,
    confirm: bool,
    /// The password rule, as `accounts::password::validate` applies it.
    min_chars: usize,
    max_chars: usize,
    /// Said instead of offering the form when no link can be built (no public URL).
    unavailable: Option<&'static str>,
}

impl ResetPage {
    fn new(title: &'static str, confirm: bool, unavailable: Option<&'static str>) -> Self {
        Self {
            layout: Layout::public(title),
            confirm,
            min_chars: password::MIN_CHARS,
            max_chars: password::MAX_CHARS,
            unavailable,
        }
    }
}

async fn reset(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = ResetPage::new(
        "Reset your password",
        false,
        state.public_url.is_none().then_some(RESET_UNAVAILABLE),
    );
    page(p.render(), Exposure::MailedLink)
}

/// The token stays in the query string only until `app.js` moves it out; it is never rendered.
/// (An operator's `accounts reset-password` link works here with or without a public URL.)
async fn reset_confirm() -> Result<HttpResponse, ApiError> {
    let p = ResetPage::new("Choose a new password", true, None);
    page(p.render(), Exposure::MailedLink)
}

struct SpendBar {
    provider: String,
    name: &'static str,
    spent: String,
    /// Empty without a ceiling.
    limit: String,
    period: &'static str,
    /// 0–100, for `<meter>`.
    percent: i64,
    reached: bool,
}

impl SpendBar {
    fn has_limit(&self) -> bool {
        !self.limit.is_empty()
    }
}

/// This period's spend of every provider the account has a ceiling for or has spent on, in the
/// registry's order.
fn spend_bars(state: &AppState, account_id: i64) -> Vec<SpendBar> {
    let mut bars: Vec<SpendBar> = state
        .proxy
        .ledger
        .snapshots(account_id)
        .into_iter()
        .filter(|(_, s)| s.limit.is_some() || s.spent > Money::ZERO)
        .map(|(provider, s)| SpendBar {
            name: display_name(&provider),
            provider,
            spent: s.spent.to_string(),
            limit: s.limit.map(|l| l.to_string()).unwrap_or_default(),
            period: period_name(s.period),
            percent: s.limit.map_or(0, |l| percent(s.spent, l)),
            reached: s.state == CeilingState::Reached,
        })
        .collect();
    bars.sort_by_key(|b| chart::Providers::index(&Registry, &b.provider));
    bars
}

fn percent(spent: Money, limit: Money) -> i64 {
    if limit.micros() <= 0 {
        return 100;
    }
    let p = i128::from(spent.micros()) * 100 / i128::from(limit.micros());
    i64::try_from(p.clamp(0, 100)).unwrap_or(100)
}

struct CallRow {
    at: String,
    provider: &'static str,
    request: String,
    model: String,
    /// Input and output tokens, e.g. `1200 → 350`.
    tokens: String,
    status: i64,
    outcome: String,
    cost: String,
    token: String,
    /// The call's `X-Keybroker-Agent` label; empty without one.
    agent: String,
    /// `420 ms`; empty for calls recorded before latency was.
    latency: String,
}

impl From<RecentCall> for CallRow {
    fn from(c: RecentCall) -> Self {
        Self {
            at: shown(c.at),
            provider: display_name(&c.provider),
            request: format!("{} {}", c.method, c.route),
            model: c.model,
            tokens: format!("{} → {}", c.input_tokens, c.output_tokens),
            status: c.status,
            outcome: c.outcome,
            cost: c.cost.to_string(),
            token: c.token,
            agent: c.agent,
            latency: if c.latency_ms > 0 {
                format!("{} ms", c.latency_ms)
            } else {
                String::new()
            },
        }
    }
}

async fn recent_calls(state: &AppState, account_id: i64) -> Result<Vec<RecentCall>, ApiError> {
    // What the proxy has settled but the writer not yet written belongs on the page too.
    state.proxy.writer.flush().await;
    state
        .db
        .read(move |conn| {
            spend_store::recent_calls(conn, account_id, RECENT_CALLS).map_err(ApiError::from)
        })
        .await
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct OverviewPage {
    layout: Layout,
    bars: Vec<SpendBar>,
    calls: Vec<CallRow>,
    refusals: Vec<CallRow>,
}

async fn overview(
    auth: Result<Authenticated, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Pages are for signed-in users: anyone else goes to `/login`.
    let Ok(auth) = auth else {
        return Ok(redirect("/login"));
    };
    let layout = Layout::of(&state, &auth, "Dashboard", "dashboard").await?;
    let bars = spend_bars(&state, auth.account_id)
        .into_iter()
        .filter(SpendBar::has_limit)
        .collect();
    let recent = recent_calls(&state, auth.account_id).await?;
    let refusals = recent
        .iter()
        .filter(|c| c.outcome == "refused")
        .cloned()
        .map(CallRow::from)
        .collect();
    let p = OverviewPage {
        layout,
        bars,
        calls: recent.into_iter().map(CallRow::from).collect(),
        refusals,
    };
    page(p.render(), Exposure::Private)
}

/// "OpenAI" for `openai`; an id the registry no longer has is shown as "unknown provider".
fn display_name(id: &str) -> &'static str {
    crate::providers::lookup(id).map_or("unknown provider", |p| p.display_name)
}

/// Provider names and colours for the chart: the registry's, in its order.
struct Registry;

impl chart::Providers for Registry {
    fn name(&self, id: &str) -> &'static str {
        display_name(id)
    }

    fn index(&self, id: &str) -> usize {
        PROVIDERS
            .iter()
            .position(|p| p.id == id)
            .unwrap_or(PROVIDERS.len())
    }
}

struct UsageView {
    name: &'static str,
    calls: i64,
    refused: i64,
    input_tokens: i64,
    output_tokens: i64,
    spend: String,
}

impl From<UsageRow> for UsageView {
    fn from(u: UsageRow) -> Self {
        Self {
            name: display_name(&u.provider),
            calls: u.calls,
            refused: u.refused,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            spend: u.spend_usd.to_string(),
        }
    }
}

#[derive(Template)]
#[template(path = "spend.html")]
struct SpendPage {
    layout: Layout,
    bars: Vec<SpendBar>,
    chart: chart::Chart,
    /// Totals per provider over the chart's days.
    usage: Vec<UsageView>,
    calls: Vec<CallRow>,
    days: i64,
}

async fn spend_page(
    auth: Result<Authenticated, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Pages are for signed-in users: anyone else goes to `/login`.
    let Ok(auth) = auth else {
        return Ok(redirect("/login"));
    };
    let layout = Layout::of(&state, &auth, "Spend", "spend").await?;
    let account_id = auth.account_id;
    let bars = spend_bars(&state, account_id);
    let calls = recent_calls(&state, account_id).await?;
    let now = state.clock.unix();
    let first_day = now - now.rem_euclid(chart::DAY_SECS) - (SPEND_DAYS - 1) * chart::DAY_SECS;
    let until = first_day + SPEND_DAYS * chart::DAY_SECS;
    let (daily, usage) = state
        .db
        .read(move |conn| -> Result<_, ApiError> {
            Ok((
                spend_store::daily_spend(conn, account_id, first_day, until)?,
                spend_store::usage(conn, account_id, first_day, until)?,
            ))
        })
        .await?;
    let mut usage = usage;
    usage.sort_by_key(|u| chart::Providers::index(&Registry, &u.provider));
    let p = SpendPage {
        layout,
        bars,
        chart: chart::layout(&daily, first_day, SPEND_DAYS, &Registry, shown_day),
        usage: usage.into_iter().map(UsageView::from).collect(),
        calls: calls.into_iter().map(CallRow::from).collect(),
        days: SPEND_DAYS,
    };
    page(p.render(), Exposure::Private)
}

struct ProviderOption {
    id: &'static str,
    name: &'static str,
    /// Space-separated literal key starts, for the check before submit.
    prefixes: String,
}

fn provider_options() -> Vec<ProviderOption> {
    PROVIDERS
        .iter()
        .map(|p| ProviderOption {
            id: p.id,
            name: p.display_name,
            prefixes: p.prefixes().join(" "),
        })
        .collect()
}

struct KeyView {
    id: String,
    provider: String,
    provider_name: &'static str,
    /// Space-separated literal key starts, for the check before a rotation is sent.
    prefixes: String,
    label: String,
    masked: String,
    created_at: String,
    last_used_at: String,
}

struct CeilingView {
    provider: String,
    name: &'static str,
    limit: String,
    spent: String,
    period: &'static str,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    layout: Layout,
    keys: Vec<KeyView>,
    providers: Vec<ProviderOption>,
    ceilings: Vec<CeilingView>,
}

async fn keys(
    auth: Result<Authenticated, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Pages are for signed-in users: anyone else goes to `/login`.
    let Ok(auth) = auth else {
        return Ok(redirect("/login"));
    };
    let layout = Layout::of(&state, &auth, "Provider keys", "keys").await?;
    let account_id = auth.account_id;
    let rows = state
        .db
        .read(move |conn| key_store::list(conn, account_id).map_err(ApiError::from))
        .await?;
    let keys = rows
        .into_iter()
        .map(|r| KeyView {
            provider_name: display_name(&r.provider),
            prefixes: crate::providers::lookup(&r.provider)
                .map(|p| p.prefixes().join(" "))
                .unwrap_or_default(),
            id: r.id,
            provider: r.provider,
            label: r.label,
            masked: r.masked,
            created_at: shown(r.created_at),
            last_used_at: shown_or_never(r.last_used_at),
        })
        .collect();
    let ceilings = state
        .proxy
        .ledger
        .snapshots(account_id)
        .into_iter()
        .filter_map(|(provider, s)| {
            Some(CeilingView {
                name: display_name(&provider),
                provider,
                limit: s.limit?.to_string(),
                spent: s.spent.to_string(),
                period: period_name(s.period),
            })
        })
        .collect();
    let p = KeysPage {
        layout,
        keys,
        providers: provider_options(),
        ceilings,
    };
    page(p.render(), Exposure::Private)
}

/// A token's providers by name, in the registry's order (as the form lists them); none listed
/// means every provider.
fn provider_names(ids: &[String]) -> String {
    if ids.is_empty() {
        return "all providers".into();
    }
    let mut ids: Vec<&String> = ids.iter().collect();
    ids.sort_by_key(|id| chart::Providers::index(&Registry, id));
    ids.into_iter()
        .map(|id| display_name(id))
        .collect::<Vec<_>>()
        .join(", ")
}

struct TokenView {
    id: String,
    name: String,
    providers: String,
    /// Methods and paths it is held to, and where it sits among parents and children.
    scope: String,
    /// `$0.37 of $1.00 ($0.63 left)`, or `no limit`.
    spend: String,
    created_at: String,
    expires_at: String,
    last_used_at: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    layout: Layout,
    tokens: Vec<TokenView>,
    providers: Vec<ProviderOption>,
    /// Where tools reach keybroker, for the SDK snippet.
    base_url: String,
}

async fn tokens(
    auth: Result<Authenticated, ApiError>,
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // Pages are for signed-in users: anyone else goes to `/login`.
    let Ok(auth) = auth else {
        return Ok(redirect("/login"));
    };
    let layout = Layout::of(&state, &auth, "Tool tokens", "tokens").await?;
    let (account_id, now) = (auth.account_id, state.clock.unix());
    let rows = state
        .db
        .read(move |conn| crate::tokens::list(conn, account_id).map_err(ApiError::from))
        .await?;
    let ledger = &state.proxy.ledger;
    let tokens = rows
        .iter()
        .filter(|t| !t.expired(now))
        .map(|t| {
            let key = crate::spend::budget::token_key(&t.id);
            let spend = if ledger.has_limit(account_id, &key) {
                let b = ledger.snapshot(account_id, &key);
                format!(
                    "${} of ${} (${} left)",
                    b.spent,
                    b.limit.unwrap_or_default(),
                    b.remaining.unwrap_or_default()
                )
            } else {
                "no limit".to_owned()
            };
            let mut scope = Vec::new();
            if let Some(m) = &t.scope.methods {
                scope.push(m.join(" "));
            }
            if let Some(p) = &t.scope.paths {
                scope.push(p.join(" "));
            }
            if let Some(parent) = t.parent_id.as_deref() {
                let name = rows
                    .iter()
                    .find(|p| p.id == parent)
                    .map_or(parent, |p| p.name.as_str());
                scope.push(format!("child of {name}"));
            }
            let children = rows
                .iter()
                .filter(|c| c.parent_id.as_deref() == Some(t.id.as_str()))
                .count();
            if children > 0 {
                scope.push(format!(
                    "{children} child token{}",
                    if children == 1 { "" } else { "s" }
                ));
            }
            TokenView {
                id: t.id.clone(),
                name: t.name.clone(),
                providers: provider_names(&t.providers),
                scope: if scope.is_empty() {
                    "any method and path".to_owned()
                } else {
                    scope.join("; ")
                },
                spend,
                created_at: shown(t.created_at),
                expires_at: shown_or_never(t.expires_at),
                last_used_at: shown_or_never(t.last_used_at),
            }
        })
        .collect();
    let base_url = state
        .public_url
        .clone()
        .unwrap_or_else(|| crate::http::client_addr::own_origin(&req));
    let p = TokensPage {
        layout,
        tokens,
        providers: provider_options(),
        base_url,
    };
    page(p.render(), Exposure::Private)
}

struct SessionView {
    id: String,
    created_at: String,
    last_seen_at: String,
    user_agent: String,
    client_addr: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    layout: Layout,
    sessions: Vec<SessionView>,
}

async fn sessions(
    auth: Result<Authenticated, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Pages are for signed-in users: anyone else goes to `/login`.
    let Ok(auth) = auth else {
        return Ok(redirect("/login"));
    };
    let layout = Layout::of(&state, &auth, "Sessions", "sessions").await?;
    let (account_id, now) = (auth.account_id, state.clock.unix());
    let rows = state
        .db
        .read(move |conn| session::list(conn, account_id, now).map_err(ApiError::from))
        .await?;
    let sessions = rows
        .into_iter()
        .map(|s| SessionView {
            current: s.id_hash == auth.session_hash,
            id: s.public_id,
            created_at: shown(s.created_at),
            last_seen_at: shown(s.last_seen_at),
            user_agent: s.user_agent,
            client_addr: s.client_addr,
        })
        .collect();
    page(
        SessionsPage { layout, sessions }.render(),
        Exposure::Private,
    )
}

#[derive(Deserialize)]
struct AuditFilter {
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Entries older than this id: the "older entries" link.
    before: Option<i64>,
}

struct AuditRow {
    at: String,
    action: String,
    resource: String,
    outcome: String,
    client_addr: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<AuditRow>,
    action: String,
    since: String,
    until: String,
    /// The filter as a query string for the export links (already URL-encoded).
    export_query: String,
    /// The query string of the next (older) page, when there may be one.
    older_query: String,
    error: String,
}

/// Empty form fields mean "no filter".
fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

async fn audit_page(
    auth: Result<Authenticated, ApiError>,
    state: web::Data<AppState>,
    filter: web::Query<AuditFilter>,
) -> Result<HttpResponse, ApiError> {
    // Pages are for signed-in users: anyone else goes to `/login`.
    let Ok(auth) = auth else {
        return Ok(redirect("/login"));
    };
    let layout = Layout::of(&state, &auth, "Audit log", "audit").await?;
    let action = non_empty(&filter.action).map(str::to_owned);
    let since_raw = non_empty(&filter.since).map(str::to_owned);
    let until_raw = non_empty(&filter.until).map(str::to_owned);
    let since = since_raw.as_deref().map(crate::timefmt::parse_rfc3339);
    let until = until_raw.as_deref().map(crate::timefmt::parse_rfc3339);
    let mut error = String::new();
    if matches!(since, Some(None)) || matches!(until, Some(None)) {
        error = "Times are RFC 3339, like 2025-01-31T00:00:00Z.".into();
    }
    let (since, until) = (since.flatten(), until.flatten());
    let (account_id, before) = (auth.account_id, filter.before.filter(|b| *b > 0));
    let act = action.clone();
    let entries = state
        .db
        .read(move |conn| {
            let q = audit::Query {
                since,
                until,
                action: act.as_deref(),
                before_id: before,
                limit: AUDIT_PAGE,
            };
            audit::list(conn, account_id, &q).map_err(ApiError::from)
        })
        .await?;
    let mut export = String::new();
    for (name, value) in [
        ("action", &action),
        ("since", &since_raw),
        ("until", &until_raw),
    ] {
        if let Some(v) = value {
            export.push('&');
            export.push_str(name);
            export.push('=');
            export.push_str(&url_encode(v));
        }
    }
    let older_query = match entries.last() {
        Some(last) if entries.len() == AUDIT_PAGE as usize => {
            format!("before={}{export}", last.id)
        }
        _ => String::new(),
    };
    let p = AuditPage {
        layout,
        older_query,
        entries: entries
            .into_iter()
            .map(|e| AuditRow {
                at: shown(e.at),
                action: e.action,
                resource: e.resource,
                outcome: e.outcome,
                client_addr: e.client_addr,
            })
            .collect(),
        action: action.unwrap_or_default(),
        since: since_raw.unwrap_or_default(),
        until: until_raw.unwrap_or_default(),
        export_query: export,
        error,
    };
    page(p.render(), Exposure::Private)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_clamped_and_a_zero_limit_is_full() {
        assert_eq!(percent(Money::from_usd(1), Money::from_usd(4)), 25);
        assert_eq!(percent(Money::from_usd(9), Money::from_usd(4)), 100);
        assert_eq!(percent(Money::ZERO, Money::ZERO), 100);
    }

    #[test]
    fn url_encode_keeps_only_unreserved() {
        assert_eq!(url_encode("a b&c=d:é"), "a%20b%26c%3Dd%3A%C3%A9");
    }
}
