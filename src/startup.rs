//! Builds the application from typed settings: data directory, secrets, database, vault checks,
//! the HTTP server. `main` and every test start the server through [`Application::build`], so
//! they run the same code; the bound port is reported, so tests can bind port 0.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::accounts::oauth::OAuthSettings;
use crate::accounts::signup::SignupPolicy;
use crate::accounts::throttle::Throttle;
use crate::accounts::EmailHasher;
use crate::clock::SharedClock;
use crate::config::{self, ConfigError, ServerSecrets, Settings};
use crate::db::{Db, DbError};
use crate::error::extractors;
use crate::http::client_addr::{self, TrustedProxies};
use crate::http::tls::{self, CertStore, TlsError};
use crate::http::{
    access_log, body_deadline, compact_head, every_response, key_in_url, request_id,
};
use crate::mail::{self, MailError, MailWorker, Mailer, Outbox};
use crate::metering::prices::PriceTable;
use crate::proxy::Proxy;
use crate::routes;
use crate::secret::ServerSecret;
use crate::spend::journal::HoldJournal;
use crate::spend::shared::Shared;
use crate::spend::store;
use crate::spend::writer::SpendWriter;
use crate::spend::Ledger;
use crate::tokens::TokenCache;
use crate::vault::Vault;
use crate::vault_store::{self, StoreError};

/// Largest JSON body the API accepts. Keys and labels are small; anything bigger is a mistake.
pub const API_JSON_LIMIT: usize = 64 * 1024;

/// What every handler can reach.
pub struct AppState {
    pub db: Db,
    pub vault: Arc<Vault>,
    pub emails: EmailHasher,
    pub session_secret: ServerSecret,
    pub fingerprint_secret: ServerSecret,
    pub clock: SharedClock,
    pub public_url: Option<String>,
    /// Tool-token lookups for the proxy; revocations through the API evict at once.
    pub tokens: TokenCache,
    /// The provider registry: built-ins plus the operator's `KEYBROKER_PROVIDERS` file.
    pub providers: Arc<crate::providers::Registry>,
    /// Sealed keys recently read by the proxy; key rotation and deletion evict.
    pub key_cache: crate::keys::cache::KeyCache,
    pub proxy: Proxy,
    /// What `/metrics` shows (the proxy's timings included: `proxy.metrics` is the same).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `/metrics` is served on its own listener; the main one answers 404 for it.
    pub metrics_elsewhere: bool,
    pub security_txt: crate::ops::SecurityTxt,
    /// Outgoing mail (reset links, notifications), queued in the database and sent by this
    /// instance's mail worker (or another's).
    pub mail: Outbox,
    /// Webhook deliveries, queued in the database and sent by this instance's worker (or
    /// another's).
    pub webhooks: crate::webhooks::Webhooks,
    /// Password checks (login, reauth) per account and per client address.
    pub login_throttle: Throttle,
    /// Password-reset requests per email and per client address.
    pub reset_throttle: Throttle,
    /// Sign-ups per email and per client address (each one sends a mail to the address).
    pub signup_throttle: Throttle,
    pub oauth: OAuthSettings,
    /// Talks to OAuth providers: no redirects followed (SSRF), bounded time.
    pub http: reqwest::Client,
    /// Who may sign up (`KEYBROKER_SIGNUP`).
    pub signup_policy: SignupPolicy,
    /// The outbox folder mail is written to when no SMTP server is configured (`None` with
    /// SMTP). A configuration fact, said on the sign-up page and in its answer.
    pub mail_outbox: Option<String>,
    /// Where password hashes and checks run, a bounded number at a time.
    pub passwords: crate::accounts::password::HashingPool,
    /// Longest time to receive a request body (`http::body_deadline`).
    pub body_timeout: std::time::Duration,
}

/// How long a call to an OAuth provider may take.
const PROVIDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("providers file {0}")]
    Providers(String),
    #[error("price table: {0}")]
    Prices(String),
    #[error("spend recovery: {0}")]
    Spend(String),
    #[error("start-up task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("HTTP client: {0}")]
    HttpClient(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    mail_worker: MailWorker,
    webhook_worker: crate::queue::QueueWorker,
    /// Gives child tokens' unspent carves back to their parents (`spend::budget`).
    carve_sweeper: tokio::task::JoinHandle<()>,
    transport: Transport,
    /// The `--metrics-bind` listener and its port.
    metrics_server: Option<(Server, u16)>,
}

/// The HTTPS side of the server, when configured: the SIGHUP certificate reloader and the
/// plain-HTTP redirect listener.
#[derive(Default)]
struct Transport {
    reloader: Option<tokio::task::JoinHandle<()>>,
    redirect: Option<(u16, Server)>,
}

/// Opens the database and checks it against the vault: the canary must decrypt (wrong master
/// key → refuse) and every master key id in use must be configured.
pub async fn open_storage(settings: &Settings) -> Result<(Db, Arc<Vault>), StartError> {
    config::prepare_data_dir(&settings.data_dir)?;
    let keyring = config::resolve_keyring(
        &settings.secrets,
        &settings.data_dir,
        settings.missing_secrets_policy(),
    )?;
    let vault = Arc::new(Vault::new(keyring));
    let location = settings.database_location();
    let db = tokio::task::spawn_blocking(move || Db::at(&location))
        .await
        .map_err(|e| StartError::Task(e.to_string()))??;
    let v = vault.clone();
    db.write(move |conn| -> Result<(), StoreError> {
        vault_store::check_or_create_canary(conn, &v)?;
        vault_store::check_key_ids_present(conn, &v)
    })
    .await?;
    Ok((db, vault))
}

/// Gives accounts made before lookalike detection their skeleton hash (and re-keys those whose
/// address normalises differently now); see `accounts::backfill`. Only rows still missing it are
/// read, so after the first start this is one indexed query.
async fn backfill_accounts(
    db: &Db,
    vault: &Arc<Vault>,
    emails: &EmailHasher,
) -> Result<(), StartError> {
    let (vault, emails) = (vault.clone(), emails.clone());
    let done = db
        .write(move |conn| {
            crate::accounts::backfill(conn, &vault, &emails)
                .map_err(|e| StartError::Task(format!("account backfill: {e}")))
        })
        .await?;
    if done.filled > 0 {
        tracing::info!(
            filled = done.filled,
            rekeyed = done.rekeyed,
            "accounts: lookalike skeletons filled in"
        );
    }
    if done.collisions > 0 {
        tracing::warn!(
            accounts = done.collisions,
            "accounts: some addresses now normalise to another account's address; they keep their old key, and signing in with that address reaches the other account (merge or remove one)"
        );
    }
    if done.unparsable > 0 {
        tracing::warn!(
            accounts = done.unparsable,
            "accounts: some stored addresses no longer parse (a quoted local part, a domain literal) or do not open; they have no lookalike skeleton and cannot sign in by email"
        );
    }
    Ok(())
}

/// What a newcomer or an operator would otherwise find out the hard way, said once at start-up
/// (one line each, before the "listening" line).
fn start_up_warnings(settings: &Settings, outbox: Option<&str>) {
    let public = !settings.bind.ip().is_loopback();
    if public && settings.tls.is_none() && settings.trusted_proxies.is_empty() {
        tracing::warn!(
            bind = %settings.bind,
            "serving plain HTTP on a non-loopback address: browsers drop the Secure session cookie, so signing in from another machine fails; serve HTTPS with --tls-cert and --tls-key, or put a TLS reverse proxy in front and name it with --trusted-proxy"
        );
    }
    if public && settings.signup == SignupPolicy::Open {
        tracing::warn!(
            bind = %settings.bind,
            "sign-up is open to anyone who can reach this address; set KEYBROKER_SIGNUP=invite (then keybroker accounts invite EMAIL) or KEYBROKER_SIGNUP=closed"
        );
    }
    if let Some(dir) = outbox {
        tracing::info!(
            outbox = %dir,
            "no KEYBROKER_SMTP_URL: mail (sign-up confirmations included) is written to the outbox folder; keybroker accounts confirm EMAIL confirms an account without it"
        );
    }
}

/// The spend ledger restored from the database (holds a crash left behind are charged in full
/// first), its writer, and the price table.
async fn build_proxy(
    settings: &Settings,
    db: &Db,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Proxy, StartError> {
    let overrides = match &settings.prices_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| StartError::Prices(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let prices = PriceTable::load(
        crate::metering::prices::DEFAULT_PRICES_TOML,
        overrides.as_deref(),
    )
    .map_err(|e| StartError::Prices(e.to_string()))?;
    if db.kind() == crate::db::Kind::Postgres {
        return build_shared_proxy(settings, db, metrics, prices).await;
    }
    let journal_dir = settings.spend_journal_dir();
    let dir = journal_dir.clone();
    let store::Recovery {
        recovered,
        rows,
        epoch,
    } = db
        .write(move |conn| {
            store::recover_and_load(conn, Some(&dir)).map_err(|e| StartError::Spend(e.to_string()))
        })
        .await?;
    if recovered.holds_charged > 0 {
        tracing::warn!(holds = recovered.holds_charged, from_journal = recovered.from_journal, amount = %recovered.amount, "charged calls left in flight by the last run (fail closed)");
    }
    if recovered.journal_lines_skipped > 0 {
        tracing::warn!(
            lines = recovered.journal_lines_skipped,
            "hold journal: skipped torn or corrupt lines"
        );
    }
    let journal = HoldJournal::create(&journal_dir, epoch)
        .map_err(|e| StartError::Spend(format!("hold journal: {e}")))?;
    let writer = SpendWriter::start(db, Some(journal))?;
    let ledger = Ledger::new(
        settings.clock.clone(),
        Some(metrics.spend_sink(writer.sink())),
    );
    ledger.load(rows);
    let mut proxy = Proxy::new(settings.proxy.clone(), ledger, writer, Arc::new(prices));
    proxy.metrics = metrics.clone();
    Ok(proxy)
}

/// On PostgreSQL any number of instances serve at once and share the ceilings through leases
/// (`spend::shared`): no hold journal, and holds other instances have open are theirs, not a
/// crash's (what a crashed instance held is charged by [`Shared::start`] or by the others).
async fn build_shared_proxy(
    settings: &Settings,
    db: &Db,
    metrics: &Arc<crate::metrics::Metrics>,
    prices: PriceTable,
) -> Result<Proxy, StartError> {
    let rows = db
        .read(|c| store::rows(c).map_err(StartError::from))
        .await?;
    let (db, metrics2, clock) = (db.clone(), metrics.clone(), settings.clock.clone());
    let id_file = settings.data_dir.join("instance-id");
    let (writer, ledger, shared) = tokio::task::spawn_blocking(move || {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let writer = SpendWriter::start_shared(&db, &instance)?;
        let ledger = Ledger::shared(clock, Some(metrics2.spend_sink(writer.sink())));
        ledger.load(rows);
        let shared = Shared::start(&db, ledger.clone(), metrics2, &id_file, instance)?;
        tracing::info!(
            instance = shared.instance(),
            "sharing ceilings with any other instance on this database"
        );
        Ok::<_, StartError>((writer, ledger, shared))
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))??;
    let mut proxy = Proxy::new(settings.proxy.clone(), ledger, writer, Arc::new(prices));
    proxy.metrics = metrics.clone();
    proxy.shared = Some(shared);
    Ok(proxy)
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        // One TLS crypto provider for every client (upstreams, OAuth, SMTP): ring. Installing it
        // explicitly keeps a second provider pulled in by some dependency from leaving rustls
        // without a default (awc's connector would then panic). Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (db, vault) = open_storage(&settings).await?;
        let secrets = ServerSecrets::resolve(
            &settings.secrets,
            &settings.data_dir,
            settings.missing_secrets_policy(),
        )?;
        let emails = EmailHasher::new(secrets.email_pepper.clone());
        backfill_accounts(&db, &vault, &emails).await?;
        let passwords = crate::accounts::password::HashingPool::new(settings.password_hashers)
            .map_err(|e| StartError::Task(e.to_string()))?;
        // The dummy hash makes unknown-email logins as slow as wrong-password ones; build it now
        // so the first such login is not the odd one out (on a hashing thread, which keeps the
        // argon2 memory for the hashes to come).
        passwords
            .run(crate::accounts::password::warm_up)
            .await
            .map_err(|_| StartError::Task("the password hashing threads are gone".into()))?;
        let providers = Arc::new(match &settings.providers_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| StartError::Providers(format!("{}: {e}", path.display())))?;
                crate::providers::Registry::load(&text)
                    .map_err(|e| StartError::Providers(format!("{}: {e}", path.display())))?
            }
            None => crate::providers::Registry::builtin(),
        });
        log_provider_overrides(&providers, &settings);
        let metrics = Arc::new(crate::metrics::Metrics::new(providers.ids()));
        let proxy = build_proxy(&settings, &db, &metrics).await?;
        let mailer = Mailer::new(&settings.mail, &settings.data_dir)?;
        let (outbox, mail_worker) =
            mail::start(mailer, db.clone(), vault.clone(), settings.clock.clone());
        let (webhooks, webhook_worker) = crate::webhooks::start(
            db.clone(),
            vault.clone(),
            settings.clock.clone(),
            settings.webhook.clone(),
        );
        if settings.webhook.danger_allow_private_addresses {
            tracing::warn!("KEYBROKER_WEBHOOK_ALLOW_PRIVATE is set: webhooks may reach loopback, private and link-local addresses (the cloud metadata service included)");
        }
        // Spend alerts: the spend writer tells this hook of every threshold a batch crosses.
        proxy
            .writer
            .set_alert_hook(Arc::new(crate::alerts::SpendAlerts::new(
                vault.clone(),
                outbox.clone(),
                webhooks.clone(),
                settings.clock.clone(),
            )));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .user_agent(concat!("keybroker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StartError::HttpClient(e.to_string()))?;
        if settings.public_url.is_none() {
            tracing::warn!("KEYBROKER_PUBLIC_URL is not set: password-reset mails and OAuth sign-in are disabled (links are never built from a request's Host header)");
        }
        let tokens = TokenCache::new();
        let key_cache = crate::keys::cache::KeyCache::default();
        // Revocations, deletions and rotations made through any instance evict here too.
        crate::invalidate::subscribe(&db, tokens.clone(), key_cache.clone())?;
        let state = web::Data::new(AppState {
            db,
            vault,
            emails,
            session_secret: secrets.session_secret,
            fingerprint_secret: secrets.fingerprint_secret,
            clock: settings.clock.clone(),
            tokens,
            providers,
            key_cache,
            proxy,
            metrics,
            metrics_elsewhere: settings.metrics_bind.is_some(),
            security_txt: settings.security_txt.clone(),
            public_url: settings
                .public_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            mail: outbox,
            webhooks,
            login_throttle: Throttle::new(settings.throttle.login, &settings.clock),
            reset_throttle: Throttle::new(settings.throttle.reset, &settings.clock),
            signup_throttle: Throttle::new(settings.throttle.signup, &settings.clock),
            oauth: settings.oauth.clone(),
            http,
            body_timeout: settings.body_timeout,
            signup_policy: settings.signup,
            mail_outbox: settings
                .mail
                .smtp_url
                .is_none()
                .then(|| mail::outbox_dir(&settings.data_dir).display().to_string()),
            passwords,
        });

        let carve_sweeper =
            spawn_carve_sweeper(std::sync::Arc::downgrade(&state.clone().into_inner()));

        let bind_err = |source| StartError::Bind {
            addr: settings.bind.to_string(),
            source,
        };
        let listener = TcpListener::bind(settings.bind).map_err(bind_err)?;
        let port = listener.local_addr().map_err(bind_err)?.port();
        if settings.redirect_http.is_some() && settings.tls.is_none() {
            return Err(ConfigError::Invalid(
                "--redirect-http needs --tls-cert and --tls-key".into(),
            )
            .into());
        }
        let certs = settings.tls.clone().map(CertStore::load).transpose()?;
        let trusted = web::Data::new(TrustedProxies::new(settings.trusted_proxies.clone()));
        let app_state = state.clone();
        let proxy_settings = settings.proxy.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(web::Data::new(crate::proxy::UpstreamClient::new(
                    &proxy_settings,
                )))
                .app_data(extractors::json_config(API_JSON_LIMIT))
                .app_data(extractors::path_config())
                .app_data(extractors::query_config())
                .app_data(trusted.clone())
                // Innermost, so the refusal still gets a request id, security headers and an
                // access-log line (which names no URL).
                .wrap(from_fn(key_in_url::middleware))
                .wrap(from_fn(body_deadline::middleware))
                .wrap(from_fn(every_response::middleware))
                .wrap(from_fn(access_log::middleware))
                .wrap(from_fn(client_addr::middleware))
                .wrap(from_fn(request_id::middleware))
                // Outermost, so no layer has cloned a header value before it is moved out of the
                // connection's read buffer.
                .wrap(from_fn(compact_head::middleware))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
        })
        .tcp_nodelay(true)
        // Slow clients: a request head must arrive within 5 s (else 408 and close), an idle
        // keep-alive connection is closed after 5 s, and a closing one gets 1 s to go. The body
        // has its own deadline (`http::body_deadline`). These are actix's defaults, stated here
        // because the slow-client drill (tests/api/drills.rs) depends on them.
        .client_request_timeout(std::time::Duration::from_secs(5))
        .keep_alive(std::time::Duration::from_secs(5))
        .client_disconnect_timeout(std::time::Duration::from_secs(1));
        server = match &certs {
            Some(certs) => server.listen_rustls_0_23(listener, certs.server_config()?),
            None => server.listen(listener),
        }
        .map_err(bind_err)?
        .shutdown_timeout(30);
        if let Some(workers) = settings.workers {
            server = server.workers(workers.max(1));
        }
        let transport = match certs {
            Some(certs) => Transport::start(&settings, certs, port)?,
            None => Transport::default(),
        };
        let metrics_server = match settings.metrics_bind {
            Some(addr) => Some(crate::ops::metrics_server(addr, state.clone())?),
            None => None,
        };
        let metrics_port = metrics_server.as_ref().map(|(_, p)| *p);
        start_up_warnings(&settings, state.mail_outbox.as_deref());
        let scheme = if transport.reloader.is_some() {
            "https"
        } else {
            "http"
        };
        let host = match settings.bind.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let url = format!("{scheme}://{host}:{port}/");
        tracing::info!(port, %url, ?metrics_port, data_dir = %settings.data_dir.display(), "keybroker listening: open {url}");
        Ok(Self {
            port,
            server: server.run(),
            state,
            mail_worker,
            webhook_worker,
            carve_sweeper,
            transport,
            metrics_server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The plain-HTTP redirect listener's port, when there is one.
    pub fn redirect_port(&self) -> Option<u16> {
        self.transport.redirect.as_ref().map(|(port, _)| *port)
    }

    /// The port of the `--metrics-bind` listener, when there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(_, p)| *p)
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until SIGINT/SIGTERM, then drains in-flight requests (up to 30 s) and the mail
    /// send in flight (up to 30 s; queued mail stays in the database).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            server,
            transport,
            metrics_server,
            mail_worker,
            webhook_worker,
            carve_sweeper,
            ..
        } = self;
        let Transport { reloader, redirect } = transport;
        let main = async move {
            match redirect {
                Some((_, redirect)) => {
                    let (served, redirected) = futures_util::future::join(server, redirect).await;
                    served.and(redirected)
                }
                None => server.await,
            }
        };
        let served = match metrics_server {
            Some((metrics, _)) => futures_util::future::join(main, metrics).await.0,
            None => main.await,
        };
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        carve_sweeper.abort();
        futures_util::future::join(mail_worker.shutdown(), webhook_worker.shutdown()).await;
        served
    }
}

/// Every second, gives back the carves of child tokens that have ended. Holds the state weakly,
/// so it ends with the application (and is aborted when the server stops).
fn spawn_carve_sweeper(state: std::sync::Weak<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let now = state.clock.unix();
            if let Err(e) = crate::spend::budget::return_carves(&state.db, &state.proxy, now).await
            {
                tracing::warn!(error = %e, "child tokens' carves could not be given back yet");
            }
        }
    })
}

impl Transport {
    /// Starts the SIGHUP reloader (before the server says it is listening, so a SIGHUP sent as
    /// soon as it does is never fatal) and binds the redirect listener.
    fn start(
        settings: &Settings,
        certs: Arc<CertStore>,
        https_port: u16,
    ) -> Result<Self, StartError> {
        let task_err = |e: std::io::Error| StartError::Task(format!("SIGHUP handler: {e}"));
        let reloader = Some(tls::reload_on_sighup(certs).map_err(task_err)?);
        let redirect = match settings.redirect_http {
            Some(addr) => {
                let bind_err = |source| StartError::Bind {
                    addr: addr.to_string(),
                    source,
                };
                let listener = TcpListener::bind(addr).map_err(bind_err)?;
                let port = listener.local_addr().map_err(bind_err)?.port();
                let target = tls::RedirectTarget::new(settings.public_url.as_deref(), https_port);
                let server = tls::redirect_server(listener, target).map_err(bind_err)?;
                tracing::info!(port, "plain HTTP redirects to HTTPS");
                Some((port, server))
            }
            None => None,
        };
        Ok(Self { reloader, redirect })
    }
}

/// Says once at start where each provider whose base URL differs from the built-in table points,
/// and why (the providers file, or `KEYBROKER_UPSTREAM_<PROVIDER>`): a call that goes somewhere
/// unexpected is then explained by the first lines of the log.
fn log_provider_overrides(providers: &crate::providers::Registry, settings: &Settings) {
    let builtin = crate::providers::Registry::builtin();
    for p in providers.all() {
        match builtin.lookup(p.id) {
            Some(b) if b.base_url == p.base_url => {}
            Some(_) => tracing::info!(
                provider = p.id,
                base_url = p.base_url,
                "provider base URL changed by the providers file"
            ),
            None => tracing::info!(
                provider = p.id,
                base_url = p.base_url,
                "provider added by the providers file"
            ),
        }
    }
    for (provider, base) in &settings.proxy.upstreams {
        tracing::info!(%provider, base_url = %base, "provider base URL overridden by {}", crate::providers::upstream_env_var(provider));
    }
}
