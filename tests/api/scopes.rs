//! Method and path scopes of tool tokens (issue 22): a token limited to some methods or upstream
//! paths reaches the provider only inside them, whatever spelling of a path it sends; a call
//! outside is 403 `forbidden_by_scope` and the provider sees nothing.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fake_upstream::FakeUpstream;
use crate::helpers::{Session, TestApp};
use crate::hostile_request::raw;
use crate::key_helpers::{create_token, error_type};
use crate::proxy::{add_key, app_with_upstream, OPENAI_KEY};

/// An app with an OpenAI key and a token made with `scope` (merged into the create body).
async fn scoped(scope: Value) -> (TestApp, FakeUpstream, Session, String) {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let mut body = json!({"name": "scoped"});
    for (k, v) in scope.as_object().unwrap() {
        body[k] = v.clone();
    }
    let created = create_token(&app, &s, body).await;
    let token = created["token"].as_str().unwrap().to_owned();
    (app, upstream, s, token)
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
}

async fn call(app: &TestApp, method: Method, path: &str, token: &str) -> reqwest::Response {
    let rb = app
        .client
        .request(method.clone(), app.url(&format!("/proxy/openai{path}")))
        .bearer_auth(token);
    let rb = if method == Method::POST {
        rb.json(&chat())
    } else {
        rb
    };
    rb.send().await.unwrap()
}

async fn refusal(res: reqwest::Response) -> (String, String) {
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    (
        body["error"]["type"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_get_only_token_passes_a_get_and_is_refused_a_post_before_the_provider_sees_it() {
    let (app, upstream, s, t) = scoped(json!({"methods": ["get"]})).await;
    let res = call(&app, Method::GET, "/v1/models", &t).await;
    assert_eq!(res.status(), 200);
    assert_eq!(upstream.recorder.count(), 1);
    let (kind, message) = refusal(call(&app, Method::POST, "/v1/chat/completions", &t).await).await;
    assert_eq!(kind, "forbidden_by_scope");
    assert!(message.contains("method"), "{message}");
    assert_eq!(
        upstream.recorder.count(),
        1,
        "the refused call reached the provider"
    );
    // Nothing was reserved or metered for it either.
    app.state.proxy.writer.flush().await;
    let account = crate::key_helpers::account_id(&app, &s).await;
    let snap = app.state.proxy.ledger.snapshot(account, "openai");
    assert_eq!(snap.reserved, keybroker::money::Money::ZERO);
}

#[tokio::test]
async fn a_path_prefix_token_passes_below_its_prefix_and_is_refused_elsewhere() {
    let (app, upstream, _s, t) = scoped(json!({"paths": ["/v1/chat/*"]})).await;
    let res = call(&app, Method::POST, "/v1/chat/completions", &t).await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    assert_eq!(upstream.recorder.count(), 1);
    for path in [
        "/v1/embeddings",
        "/v1/chat",
        "/v1/chatter/completions",
        "/v1/models",
    ] {
        let method = if path == "/v1/models" {
            Method::GET
        } else {
            Method::POST
        };
        let (kind, message) = refusal(call(&app, method, path, &t).await).await;
        assert_eq!(kind, "forbidden_by_scope", "{path}");
        assert!(message.contains("path"), "{path}: {message}");
    }
    assert_eq!(
        upstream.recorder.count(),
        1,
        "a refused call reached the provider"
    );
}

#[tokio::test]
async fn spellings_that_normalise_outside_a_prefix_never_reach_the_provider() {
    let (app, upstream, _s, t) = scoped(json!({"paths": ["/v1/chat/*"]})).await;
    let body = serde_json::to_vec(&chat()).unwrap();
    // Written byte for byte: a client library would resolve the dot segments itself.
    let cases = [
        // Dot segments in any spelling are refused outright (400 invalid_path)...
        ("/v1/chat/../embeddings", 400),
        ("/v1/chat/%2e%2e/embeddings", 400),
        ("/v1/chat/.%2E/embeddings", 400),
        ("/v1/chat/..;x/embeddings", 400),
        ("/v1/chat/..%2fembeddings", 400),
        ("/v1/chat%2f../embeddings", 400),
        // ...and escapes and case that decode outside the prefix are outside it (403).
        ("/v1/cha%74s/completions", 403),
        ("/v1/ch%61t%2e%2e/completions", 403),
        ("/v1/CHATTER/completions", 403),
        ("/v1;chat/embeddings", 403),
    ];
    for (path, status) in cases {
        let head = format!(
            "POST /proxy/openai{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (got, text) = raw(app.port, &head, &body).await;
        assert_eq!(got, status, "{path}: {text}");
        if status == 403 {
            assert!(text.contains("forbidden_by_scope"), "{path}: {text}");
        }
    }
    assert_eq!(upstream.recorder.count(), 0, "a trick reached the provider");
    // Spellings that normalise *inside* the prefix are the same call, and pass.
    for path in [
        "/v1/%63hat/completions",
        "/V1/Chat/Completions",
        "/v1/chat;x=1/completions",
    ] {
        let res = call(&app, Method::POST, path, &t).await;
        assert_eq!(res.status(), 200, "{path}");
        res.bytes().await.unwrap();
    }
    assert_eq!(upstream.recorder.count(), 3);
}

#[tokio::test]
async fn a_tokens_scope_is_stored_upper_cased_and_shown_by_create_and_list() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let created = create_token(
        &app,
        &s,
        json!({"name": "r", "methods": ["get", "Head"], "paths": ["/v1/chat/*", "/v1/balance"]}),
    )
    .await;
    assert_eq!(created["methods"], json!(["GET", "HEAD"]));
    assert_eq!(created["paths"], json!(["/v1/chat/*", "/v1/balance"]));
    let open = create_token(&app, &s, json!({"name": "open"})).await;
    assert_eq!(open["methods"], Value::Null);
    assert_eq!(open["paths"], Value::Null);
    let listed: Value = app
        .get("/api/v1/tokens", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tokens"][0]["methods"], json!(["GET", "HEAD"]));
    assert_eq!(
        listed["tokens"][0]["paths"],
        json!(["/v1/chat/*", "/v1/balance"])
    );
    assert_eq!(listed["tokens"][1]["methods"], Value::Null);
}

#[tokio::test]
async fn invalid_methods_and_paths_are_refused_with_their_own_type_and_create_nothing() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let cases = [
        (json!({"methods": []}), "invalid_methods"),
        (json!({"methods": ["TRACE"]}), "invalid_methods"),
        (json!({"methods": ["GET", "FETCH"]}), "invalid_methods"),
        (json!({"paths": []}), "invalid_paths"),
        (json!({"paths": ["v1/chat"]}), "invalid_paths"),
        (json!({"paths": ["/v1/*/completions"]}), "invalid_paths"),
        (json!({"paths": ["/v1/chat*"]}), "invalid_paths"),
        (json!({"paths": ["/v1/chat?x=1"]}), "invalid_paths"),
        (json!({"paths": ["/v1/chat#x"]}), "invalid_paths"),
        (json!({"paths": ["/v1/../admin"]}), "invalid_paths"),
        (
            json!({"paths": [format!("/{}", "a".repeat(300))]}),
            "invalid_paths",
        ),
        (
            json!({"paths": (0..33).map(|i| format!("/v{i}")).collect::<Vec<_>>()}),
            "invalid_paths",
        ),
    ];
    for (scope, kind) in cases {
        let mut body = json!({"name": "bad"});
        for (k, v) in scope.as_object().unwrap() {
            body[k] = v.clone();
        }
        let res = app
            .post_json("/api/v1/tokens", Some(&s), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_type(res, 400).await, kind, "{scope}");
    }
    let listed: Value = app
        .get("/api/v1/tokens", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tokens"], json!([]));
}
