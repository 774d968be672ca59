//! OAuth sign-in with GitHub and Google: authorization code with PKCE (S256) and a single-use
//! `state` bound to the browser's pre-login cookie. Only a verified email is trusted; the
//! provider's password is never seen.
//!
//! Nothing secret is stored: the `state` and the pre-login id are kept as SHA-256 hashes, and the
//! PKCE verifier is derived from both with the session secret (HMAC), so the callback recomputes
//! it instead of reading it back.

use crate::db::{Conn, Optional as _};
use crate::params;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::Email;
use crate::env_var::env_var;
use crate::secret::ServerSecret;

/// The pre-login cookie. `SameSite=Lax` (not Strict): the provider's redirect back to the
/// callback is a cross-site top-level navigation, which a Strict cookie would not accompany.
pub const PRELOGIN_COOKIE: &str = "__Host-kb_oauth";
/// How long a started sign-in may take.
pub const STATE_TTL_SECS: i64 = 10 * 60;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Github,
    Google,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "github" => Some(Self::Github),
            "google" => Some(Self::Google),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Google => "google",
        }
    }

    pub fn settings(self, all: &OAuthSettings) -> Option<&OAuthClientSettings> {
        match self {
            Self::Github => all.github.as_ref(),
            Self::Google => all.google.as_ref(),
        }
    }

    fn scopes(self) -> &'static [&'static str] {
        match self {
            Self::Github => &["read:user", "user:email"],
            Self::Google => &["openid", "email"],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("a configured OAuth URL is not valid: {0}")]
    Config(&'static str),
    #[error("the token exchange failed: {0}")]
    Token(String),
    #[error("fetching the provider's user info failed: {0}")]
    UserInfo(String),
    #[error("the provider did not vouch for a verified email address")]
    NoVerifiedEmail,
}

fn hmac(secret: &ServerSecret, label: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(secret.expose()).ok()?;
    m.update(label);
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    Some(m)
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// The browser's pre-login id: 256 random bits, sent as a signed cookie.
pub struct Prelogin([u8; 32]);

impl std::fmt::Debug for Prelogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prelogin(<redacted>)")
    }
}

const PRELOGIN_LABEL: &[u8] = b"keybroker-oauth-prelogin-v1:";

impl Prelogin {
    pub fn generate() -> Self {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self(id)
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    pub fn cookie_value(&self, secret: &ServerSecret) -> String {
        let tag = hmac(secret, PRELOGIN_LABEL, &[&self.0])
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default();
        format!("{}.{}", B64.encode(self.0), B64.encode(tag))
    }

    pub fn parse_cookie(secret: &ServerSecret, value: &str) -> Option<Self> {
        let (id_b64, tag_b64) = value.split_once('.')?;
        let id: [u8; 32] = B64.decode(id_b64).ok()?.try_into().ok()?;
        let tag = B64.decode(tag_b64).ok()?;
        hmac(secret, PRELOGIN_LABEL, &[&id])?
            .verify_slice(&tag)
            .ok()?;
        Some(Self(id))
    }

    /// The PKCE verifier of the sign-in with this `state`: 43 base64url characters, as RFC 7636
    /// asks, reproducible only with the session secret, the cookie and the state together.
    pub fn pkce_verifier(&self, secret: &ServerSecret, state: &str) -> PkceCodeVerifier {
        let tag = hmac(secret, b"keybroker-pkce-v1:", &[&self.0, state.as_bytes()])
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default();
        PkceCodeVerifier::new(B64.encode(tag))
    }
}

/// A new `state`: 256 random bits.
pub fn new_state() -> String {
    random_b64(32)
}

pub fn state_hash(state: &str) -> [u8; 32] {
    Sha256::digest(state.as_bytes()).into()
}

/// The URL of the provider's consent page for this sign-in.
pub fn authorize_url(
    provider: Provider,
    settings: &OAuthClientSettings,
    redirect_uri: &str,
    state: &str,
    verifier: &PkceCodeVerifier,
) -> Result<String, OAuthError> {
    let client = BasicClient::new(ClientId::new(settings.client_id.clone()))
        .set_auth_uri(
            AuthUrl::new(settings.auth_url.clone()).map_err(|_| OAuthError::Config("AUTH_URL"))?,
        )
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_owned())
                .map_err(|_| OAuthError::Config("KEYBROKER_PUBLIC_URL"))?,
        );
    let state = state.to_owned();
    let mut request = client
        .authorize_url(move || CsrfToken::new(state))
        .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(verifier));
    for scope in provider.scopes() {
        request = request.add_scope(Scope::new((*scope).to_owned()));
    }
    Ok(request.url().0.to_string())
}

/// Trades the authorization code (with the PKCE verifier) for an access token.
pub async fn exchange_code(
    http: &reqwest::Client,
    settings: &OAuthClientSettings,
    redirect_uri: &str,
    code: String,
    verifier: PkceCodeVerifier,
) -> Result<SecretString, OAuthError> {
    let client = BasicClient::new(ClientId::new(settings.client_id.clone()))
        .set_client_secret(ClientSecret::new(
            settings.client_secret.expose_secret().to_owned(),
        ))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(
            TokenUrl::new(settings.token_url.clone())
                .map_err(|_| OAuthError::Config("TOKEN_URL"))?,
        )
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_owned())
                .map_err(|_| OAuthError::Config("KEYBROKER_PUBLIC_URL"))?,
        );
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| {
            // Only the kind of failure: bodies and transport errors stay out of the logs.
            OAuthError::Token(match e {
                RequestTokenError::ServerResponse(r) => format!("provider said {}", r.error()),
                RequestTokenError::Request(_) => "request failed".to_owned(),
                RequestTokenError::Parse(..) => "unreadable response".to_owned(),
                RequestTokenError::Other(_) => "unexpected response".to_owned(),
            })
        })?;
    Ok(SecretString::from(token.access_token().secret().to_owned()))
}

/// Who the provider says signed in: its stable id for the user and a verified email.
#[derive(Debug)]
pub struct Identity {
    pub subject: String,
    pub email: Email,
}

async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &SecretString,
) -> Result<Value, OAuthError> {
    let res = http
        .get(url)
        .bearer_auth(token.expose_secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|_| OAuthError::UserInfo("request failed".to_owned()))?;
    let status = res.status();
    if !status.is_success() {
        return Err(OAuthError::UserInfo(format!("status {}", status.as_u16())));
    }
    res.json()
        .await
        .map_err(|_| OAuthError::UserInfo("unreadable response".to_owned()))
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

/// Google's `email_verified` is a boolean; some OpenID providers send the string "true".
fn truthy(v: &Value) -> bool {
    v.as_bool() == Some(true) || v.as_str() == Some("true")
}

pub async fn fetch_identity(
    http: &reqwest::Client,
    provider: Provider,
    settings: &OAuthClientSettings,
    token: &SecretString,
) -> Result<Identity, OAuthError> {
    let info = get_json(http, &settings.userinfo_url, token).await?;
    let (subject, email) = match provider {
        Provider::Github => {
            let subject = match &info["id"] {
                Value::Number(n) => n.to_string(),
                Value::String(s) if !s.is_empty() => s.clone(),
                _ => return Err(OAuthError::UserInfo("no user id".to_owned())),
            };
            let url = settings
                .emails_url
                .as_deref()
                .ok_or(OAuthError::Config("EMAILS_URL"))?;
            let emails: Vec<GithubEmail> =
                serde_json::from_value(get_json(http, url, token).await?)
                    .map_err(|_| OAuthError::UserInfo("unreadable email list".to_owned()))?;
            // The primary address, and only if GitHub has verified it.
            let email = emails
                .into_iter()
                .find(|e| e.primary && e.verified)
                .map(|e| e.email)
                .ok_or(OAuthError::NoVerifiedEmail)?;
            (subject, email)
        }
        Provider::Google => {
            let subject = info["sub"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| OAuthError::UserInfo("no subject".to_owned()))?
                .to_owned();
            if !truthy(&info["email_verified"]) {
                return Err(OAuthError::NoVerifiedEmail);
            }
            let email = info["email"]
                .as_str()
                .ok_or(OAuthError::NoVerifiedEmail)?
                .to_owned();
            (subject, email)
        }
    };
    let email = Email::parse(&email).map_err(|_| OAuthError::NoVerifiedEmail)?;
    Ok(Identity { subject, email })
}

/// Records a started sign-in (and clears expired ones).
pub fn save_state(
    conn: &Conn<'_>,
    state_hash: &[u8; 32],
    provider: Provider,
    prelogin_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<()> {
    conn.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
    conn.execute(
        "INSERT INTO oauth_states (state_hash, provider, prelogin_hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            state_hash.as_slice(),
            provider.as_str(),
            prelogin_hash.as_slice(),
            now,
            now + STATE_TTL_SECS
        ],
    )?;
    Ok(())
}

/// Redeems a `state`: deletes its row whatever the outcome (single use) and says whether it
/// belonged to this provider and this browser and had not expired.
pub fn take_state(
    conn: &Conn<'_>,
    state_hash: &[u8; 32],
    provider: Provider,
    prelogin_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<bool> {
    let row: Option<(String, Vec<u8>, i64)> = conn
        .query_row(
            "DELETE FROM oauth_states WHERE state_hash = ?1
             RETURNING provider, prelogin_hash, expires_at",
            [state_hash.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(row.is_some_and(|(p, bound, expires_at)| {
        p == provider.as_str() && bool::from(bound.ct_eq(prelogin_hash)) && now < expires_at
    }))
}

/// The account linked to this provider user, if any (and notes the sign-in).
pub fn find_identity(
    conn: &Conn<'_>,
    provider: Provider,
    subject: &str,
    now: i64,
) -> crate::db::Result<Option<i64>> {
    conn.query_row(
        "UPDATE oauth_identities SET last_login_at = ?3 WHERE provider = ?1 AND subject = ?2
         RETURNING account_id",
        params![provider.as_str(), subject, now],
        |r| r.get(0),
    )
    .optional()
}

/// Links a provider user to an account. `false` when the account already has another user of
/// this provider linked.
pub fn link(
    conn: &Conn<'_>,
    provider: Provider,
    subject: &str,
    account_id: i64,
    now: i64,
) -> crate::db::Result<bool> {
    Ok(conn.execute(
        "INSERT INTO oauth_identities (provider, subject, account_id, created_at, last_login_at)
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING",
        params![provider.as_str(), subject, account_id, now],
    )? > 0)
}

pub fn unlink(conn: &Conn<'_>, account_id: i64, provider: Provider) -> crate::db::Result<bool> {
    Ok(conn.execute(
        "DELETE FROM oauth_identities WHERE account_id = ?1 AND provider = ?2",
        params![account_id, provider.as_str()],
    )? > 0)
}

/// The providers linked to an account, sorted.
pub fn providers_of(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT provider FROM oauth_identities WHERE account_id = ?1 ORDER BY provider",
    )?;
    let rows = stmt.query_map([account_id], |r| r.get(0))?;
    rows.collect()
}

/// One OAuth provider's client registration and endpoints. Configured only when both the client
/// id and the client secret are set; the URLs have the provider's real defaults and can be pointed
/// elsewhere (tests point them at a local fake provider).
#[derive(Clone)]
pub struct OAuthClientSettings {
    pub client_id: String,
    pub client_secret: SecretString,
    pub auth_url: String,
    pub token_url: String,
    /// GitHub: `/user` (for the stable numeric id). Google: the OpenID userinfo endpoint.
    pub userinfo_url: String,
    /// GitHub only: `/user/emails`, which says which addresses are verified.
    pub emails_url: Option<String>,
}

impl std::fmt::Debug for OAuthClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClientSettings")
            .field("client_id", &self.client_id)
            .field("auth_url", &self.auth_url)
            .field("token_url", &self.token_url)
            .field("userinfo_url", &self.userinfo_url)
            .field("emails_url", &self.emails_url)
            .finish_non_exhaustive()
    }
}

/// The OAuth providers that are configured (each `None` when its client id or secret is unset).
#[derive(Clone, Debug, Default)]
pub struct OAuthSettings {
    pub github: Option<OAuthClientSettings>,
    pub google: Option<OAuthClientSettings>,
}

impl OAuthSettings {
    /// `KEYBROKER_OAUTH_{GITHUB,GOOGLE}_{CLIENT_ID,CLIENT_SECRET,AUTH_URL,TOKEN_URL,USERINFO_URL}`,
    /// plus `KEYBROKER_OAUTH_GITHUB_EMAILS_URL`.
    pub fn from_env() -> Self {
        let direct =
            |var: &str| Ok::<_, std::convert::Infallible>(env_var(var).map(SecretString::from));
        match Self::from_env_with(direct) {
            Ok(settings) => settings,
            Err(never) => match never {},
        }
    }

    /// As [`OAuthSettings::from_env`], with each client secret read by `secret` (given the
    /// variable's name; `secret_files::value` also reads its `_FILE` form).
    pub fn from_env_with<E>(
        secret: impl Fn(&str) -> Result<Option<SecretString>, E>,
    ) -> Result<Self, E> {
        Ok(Self {
            github: OAuthClientSettings::from_env(
                "GITHUB",
                secret("KEYBROKER_OAUTH_GITHUB_CLIENT_SECRET")?,
                "https://github.com/login/oauth/authorize",
                "https://github.com/login/oauth/access_token",
                "https://api.github.com/user",
                Some("https://api.github.com/user/emails"),
            ),
            google: OAuthClientSettings::from_env(
                "GOOGLE",
                secret("KEYBROKER_OAUTH_GOOGLE_CLIENT_SECRET")?,
                "https://accounts.google.com/o/oauth2/v2/auth",
                "https://oauth2.googleapis.com/token",
                "https://openidconnect.googleapis.com/v1/userinfo",
                None,
            ),
        })
    }
}

impl OAuthClientSettings {
    fn from_env(
        provider: &str,
        client_secret: Option<SecretString>,
        auth_url: &str,
        token_url: &str,
        userinfo_url: &str,
        emails_url: Option<&str>,
    ) -> Option<Self> {
        let var = |what: &str| env_var(&format!("KEYBROKER_OAUTH_{provider}_{what}"));
        let client_id = var("CLIENT_ID")?;
        let client_secret = client_secret?;
        Some(Self {
            client_id,
            client_secret,
            auth_url: var("AUTH_URL").unwrap_or_else(|| auth_url.to_owned()),
            token_url: var("TOKEN_URL").unwrap_or_else(|| token_url.to_owned()),
            userinfo_url: var("USERINFO_URL").unwrap_or_else(|| userinfo_url.to_owned()),
            emails_url: emails_url.map(|d| var("EMAILS_URL").unwrap_or_else(|| d.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> ServerSecret {
        ServerSecret::from_bytes(vec![b; 32])
    }

    #[test]
    fn prelogin_cookie_round_trips_and_rejects_foreign_signatures() {
        let p = Prelogin::generate();
        let v = p.cookie_value(&secret(1));
        assert_eq!(
            Prelogin::parse_cookie(&secret(1), &v).unwrap().hash(),
            p.hash()
        );
        assert!(Prelogin::parse_cookie(&secret(2), &v).is_none());
        assert!(Prelogin::parse_cookie(&secret(1), "x.y").is_none());
    }

    #[test]
    fn the_pkce_verifier_is_rfc_shaped_and_bound_to_cookie_and_state() {
        let p = Prelogin::generate();
        let v = p.pkce_verifier(&secret(1), "state-a");
        assert_eq!(v.secret().len(), 43);
        assert_eq!(p.pkce_verifier(&secret(1), "state-a").secret(), v.secret());
        assert_ne!(p.pkce_verifier(&secret(1), "state-b").secret(), v.secret());
        assert_ne!(
            Prelogin::generate()
                .pkce_verifier(&secret(1), "state-a")
                .secret(),
            v.secret()
        );
    }
}
