//! Discovery: `/.well-known/security.txt` per RFC 9116 and `/openapi.json`, checked against the
//! routes that really exist.

use std::collections::{BTreeSet, HashSet};

use keybroker::clock::Clock;
use keybroker::ops::SecurityTxt;
use keybroker::routes::API_ROUTES;
use reqwest::Method;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::helpers::TestApp;

async fn app_with_contact() -> TestApp {
    TestApp::spawn_with(|s| {
        s.security_txt = SecurityTxt::new(
            vec![
                "mailto:security@example.com".into(),
                "https://example.com/report".into(),
            ],
            Some("https://example.com/disclosure".into()),
            vec!["en".into(), "fr".into()],
            180,
        )
        .unwrap();
    })
    .await
}

/// The `Name: value` fields of a security.txt, in order.
fn fields(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("a field line");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

async fn expires_of(app: &TestApp) -> OffsetDateTime {
    let res = app
        .get("/.well-known/security.txt", None)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; charset=utf-8",
        "RFC 9116 §3"
    );
    let f = fields(&res.text().await.unwrap());
    let expires: Vec<_> = f.iter().filter(|(k, _)| k == "Expires").collect();
    assert_eq!(expires.len(), 1, "Expires must appear exactly once");
    OffsetDateTime::parse(&expires[0].1, &Rfc3339).unwrap()
}

#[tokio::test]
async fn security_txt_has_the_required_fields_and_configured_ones() {
    let app = app_with_contact().await;
    let body = app
        .get("/.well-known/security.txt", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let f = fields(&body);
    let get = |name: &str| -> Vec<&str> {
        f.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("Contact"),
        ["mailto:security@example.com", "https://example.com/report"]
    );
    assert_eq!(get("Policy"), ["https://example.com/disclosure"]);
    assert_eq!(get("Preferred-Languages"), ["en, fr"]);
    // No https public URL in tests: no Canonical.
    assert!(get("Canonical").is_empty());
    let expires = expires_of(&app).await;
    let now = app.clock.now();
    assert!(expires > now + time::Duration::days(179), "{expires}");
    assert!(
        expires < now + time::Duration::days(365),
        "RFC 9116 recommends less than a year"
    );
}

#[tokio::test]
async fn security_txt_expires_stays_ahead_of_a_clock_moved_by_years() {
    let app = app_with_contact().await;
    app.clock.advance(time::Duration::days(3 * 365 + 17));
    let expires = expires_of(&app).await;
    assert!(expires > app.clock.now(), "{expires} is in the past");
}

#[tokio::test]
async fn security_txt_is_404_without_a_contact() {
    let app = TestApp::spawn().await;
    let res = app
        .get("/.well-known/security.txt", None)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "not_found"
    );
}

#[tokio::test]
async fn top_level_security_txt_redirects_to_the_well_known_one() {
    let app = app_with_contact().await;
    let res = app.get("/security.txt", None).send().await.unwrap();
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "/.well-known/security.txt");
}

async fn openapi(app: &TestApp) -> Value {
    let res = app.get("/openapi.json", None).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    res.json().await.unwrap()
}

/// `/proxy/{provider}/{tail:.*}` → `/proxy/{provider}/{tail}`: actix's regex suffix is not OpenAPI.
fn openapi_path(actix: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    let mut skipping = false;
    for c in actix.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push(c);
            }
            ':' if in_param => skipping = true,
            '}' => {
                in_param = false;
                skipping = false;
                out.push(c);
            }
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

/// What the proxy is documented with; `ANY` routes forward every method.
const ANY_METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.insert((path.clone(), method.clone()));
            }
        }
    }
    out
}

fn registered() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for r in API_ROUTES {
        let path = openapi_path(r.path);
        if r.method == "ANY" {
            for m in ANY_METHODS {
                out.insert((path.clone(), m.to_owned()));
            }
        } else {
            out.insert((path, r.method.to_ascii_lowercase()));
        }
    }
    out
}

#[tokio::test]
async fn openapi_documents_exactly_the_registered_routes() {
    let app = TestApp::spawn().await;
    let doc = openapi(&app).await;
    let documented = documented(&doc);
    let registered = registered();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty(),
        "registered, not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented, not registered: {unserved:?}"
    );
}

/// A concrete URL for a documented path template.
fn concrete(path: &str) -> String {
    path.replace("{provider}", "openai")
        .replace("{id}", "no-such-id")
        .replace("{tail}", "v1/models")
}

#[tokio::test]
async fn every_documented_operation_reaches_a_handler() {
    let app = app_with_contact().await;
    let doc = openapi(&app).await;
    for (path, method) in documented(&doc) {
        let url = concrete(&path);
        let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let res = app.client.request(m, app.url(&url)).send().await.unwrap();
        let status = res.status().as_u16();
        assert_ne!(status, 405, "{method} {path}: method not routed");
        if status == 404 {
            let body = res.text().await.unwrap();
            let kind = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["type"].as_str().map(str::to_owned));
            assert_ne!(
                kind.as_deref(),
                Some("not_found"),
                "{method} {path}: the router's 404"
            );
        }
    }
    // The request counter agrees: no request fell through to the default service.
    let text = app
        .get("/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("<unmatched>"), "{text}");
}

#[tokio::test]
async fn a_wrong_method_on_an_api_path_is_a_json_405() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .patch(app.url("/api/v1/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST, GET, HEAD");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn head_on_a_get_route_answers_its_headers_without_a_body() {
    let app = TestApp::spawn().await;
    for path in [
        "/healthz",
        "/openapi.json",
        "/api/v1/prices",
        "/login",
        "/static/app.css",
    ] {
        let get = app.client.get(app.url(path)).send().await.unwrap();
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "{path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "{path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    // HEAD is not a way around a POST-only route.
    let res = app
        .client
        .head(app.url("/api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
}

/// Every `$ref` in `v`, recursively.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r);
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_is_structurally_valid_3_1() {
    let app = TestApp::spawn().await;
    let doc = openapi(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "keybroker");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for name in ["session", "csrf", "token", "token_header"] {
        assert!(schemes.contains_key(name), "security scheme {name}");
    }
    assert_eq!(schemes["session"]["in"], "cookie");
    assert_eq!(schemes["csrf"]["in"], "header");
    assert_eq!(schemes["token"]["scheme"], "bearer");
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }
    let mut operation_ids = HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'), "{path}");
        let declared: HashSet<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            for code in responses.keys() {
                assert!(
                    code.len() == 3 && code.parse::<u16>().is_ok(),
                    "{method} {path}: response {code}"
                );
            }
            // Every path parameter is declared, and only those.
            let params: HashSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(params, declared, "{method} {path}: path parameters");
            for req in op["security"].as_array().into_iter().flatten() {
                for name in req.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{method} {path}: scheme {name}");
                }
            }
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(operation_ids.insert(id.clone()), "operationId {id} reused");
        }
    }
}

#[tokio::test]
async fn every_error_type_in_the_source_is_documented() {
    let app = TestApp::spawn().await;
    let doc = openapi(&app).await;
    let documented: HashSet<String> = doc["components"]["schemas"]["ErrorType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let pattern = regex::Regex::new(
        r#"ApiError::(?:new\(\s*StatusCode::\w+,|bad_request\(|forbidden\(|conflict\(|unavailable\()\s*"([a-z_]+)""#,
    )
    .unwrap();
    let mut found = HashSet::from([
        "not_found".to_owned(),
        "authentication_failed".to_owned(),
        "internal_error".to_owned(),
    ]);
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for c in pattern.captures_iter(&text) {
                    found.insert(c[1].to_owned());
                }
            }
        }
    }
    assert!(found.len() > 20, "the scan found too little: {found:?}");
    let missing: Vec<_> = found.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "error types not in the OpenAPI ErrorType: {missing:?}"
    );
}

/// The real binary: the flags' environment variables reach security.txt and the metrics listener.
#[tokio::test]
async fn serve_takes_discovery_and_metrics_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = crate::cli::serve(
        &data,
        &[("KEYBROKER_SECURITY_CONTACT", "security@example.com")],
    )
    .err()
    .expect("a contact without mailto: is refused");
    assert!(err.contains("KEYBROKER_SECURITY_CONTACT"), "{err}");

    let running = crate::cli::serve(
        &data,
        &[
            (
                "KEYBROKER_SECURITY_CONTACT",
                "mailto:security@example.com, https://example.com/report",
            ),
            ("KEYBROKER_SECURITY_LANGUAGES", "en,de"),
            ("KEYBROKER_METRICS_BIND", "127.0.0.1:0"),
        ],
    )
    .expect("serve starts");
    let main = format!("http://127.0.0.1:{}", running.port);
    let client = reqwest::Client::new();
    let txt = client
        .get(format!("{main}/.well-known/security.txt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let f = fields(&txt);
    assert_eq!(f.iter().filter(|(k, _)| k == "Contact").count(), 2, "{txt}");
    assert!(f.contains(&("Preferred-Languages".into(), "en, de".into())));
    assert_eq!(
        client
            .get(format!("{main}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let metrics_port = running.metrics_port.expect("the metrics port is logged");
    let scrape = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape
        .text()
        .await
        .unwrap()
        .contains("keybroker_http_requests_total"));
    assert!(crate::cli::stop(running).success());
}
