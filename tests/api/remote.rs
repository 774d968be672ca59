//! A signed-in client of a keybroker started as a separate process (`cli::serve`), and the
//! secrets such a server runs with, so several processes (serve, backup, restore, check) can share
//! them.

#![allow(dead_code)]

use reqwest::header::COOKIE;
use serde_json::{json, Value};

use crate::helpers::{random_b64, session_cookie, take_signup_token, unique_email, PASSWORD};

/// Every secret a production set-up sets, as environment variables.
#[derive(Clone, Debug)]
pub struct ServerEnv {
    pub vars: Vec<(String, String)>,
}

impl ServerEnv {
    /// Random master key (id `default`), pepper, session and fingerprint secrets.
    pub fn random() -> Self {
        Self {
            vars: vec![
                ("KEYBROKER_MASTER_KEY".into(), random_b64(32)),
                ("KEYBROKER_EMAIL_PEPPER".into(), random_b64(32)),
                ("KEYBROKER_SESSION_SECRET".into(), random_b64(32)),
                ("KEYBROKER_FINGERPRINT_SECRET".into(), random_b64(32)),
            ],
        }
    }

    /// Adds or replaces a variable.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes a variable.
    pub fn without(mut self, name: &str) -> Self {
        self.vars.retain(|(k, _)| k != name);
        self
    }

    pub fn get(&self, name: &str) -> &str {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

pub struct Remote {
    pub base: String,
    pub client: reqwest::Client,
    pub cookie: String,
    pub csrf: String,
    pub email: String,
}

impl Remote {
    /// Signs up and confirms with the code the server mailed into `<data_dir>/outbox/`.
    pub async fn signup(base: &str, data_dir: &std::path::Path) -> Remote {
        let client = reqwest::Client::new();
        let email = unique_email();
        let res = client
            .post(format!("{base}/api/v1/auth/signup"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let token = take_signup_token(data_dir, &email).await;
        let res = client
            .post(format!("{base}/api/v1/auth/signup/confirm"))
            .json(&json!({"token": token, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "signup confirmation");
        Self::from_response(base, client, email, res).await
    }

    pub async fn login(base: &str, email: &str) -> Remote {
        let client = reqwest::Client::new();
        let res = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "login");
        Self::from_response(base, client, email.to_owned(), res).await
    }

    async fn from_response(
        base: &str,
        client: reqwest::Client,
        email: String,
        res: reqwest::Response,
    ) -> Remote {
        let cookie = session_cookie(res.headers()).unwrap();
        let csrf = res.json::<Value>().await.unwrap()["csrf_token"]
            .as_str()
            .unwrap()
            .to_owned();
        Remote {
            base: base.to_owned(),
            client,
            cookie,
            csrf,
            email,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .header("X-CSRF-Token", &self.csrf);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await.unwrap()
    }

    /// Adds a key; returns its id.
    pub async fn add_key(&self, provider: &str, key: &str) -> String {
        let res = self
            .call(
                reqwest::Method::POST,
                "/api/v1/keys",
                Some(json!({"provider": provider, "key": key})),
            )
            .await;
        assert_eq!(res.status(), 201, "add key");
        res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A tool token for every provider.
    pub async fn token(&self) -> String {
        let res = self
            .call(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(json!({"name": "test tool"})),
            )
            .await;
        assert_eq!(res.status(), 201, "create token");
        res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every key's id and provider, as listed.
    pub async fn keys(&self) -> Vec<(String, String)> {
        let keys: Value = self
            .call(reqwest::Method::GET, "/api/v1/keys", None)
            .await
            .json()
            .await
            .unwrap();
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["id"].as_str().unwrap().to_owned(),
                    k["provider"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Re-authenticates, then reveals key `id`.
    pub async fn reveal(&self, id: &str) -> String {
        let res = self
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/reauth",
                Some(json!({"password": PASSWORD})),
            )
            .await;
        assert_eq!(res.status(), 200, "reauth");
        let res = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/keys/{id}/reveal"),
                None,
            )
            .await;
        assert_eq!(res.status(), 200, "reveal");
        res.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// One non-streamed OpenAI chat completion through the proxy.
pub async fn proxy_chat(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/proxy/openai/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}))
        .send()
        .await
}
