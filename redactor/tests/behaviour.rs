//! What the redactor does to ordinary log lines (nothing) and to the secrets keybroker handles.

use redactor::{marker, matches_format, Counts, Kind, Redactor, MIN_SECRET_LEN};
use std::borrow::Cow;

fn assert_untouched(r: &Redactor, line: &str) {
    let out = r.redact(line);
    assert!(
        matches!(out, Cow::Borrowed(_)),
        "changed an ordinary line:\n  in:  {line:?}\n  out: {out:?}"
    );
    assert!(!r.contains_secret(line), "contains_secret on {line:?}");
}

#[test]
fn ordinary_log_lines_survive_unchanged_and_unallocated() {
    let r = Redactor::new();
    for line in [
        "request_id=0b7c2a4e-9d7f-4c1b-8e2a-6f3d5a1c9b20 user=3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "deployed commit 5e83dbc0e1f6a9b3c2d4e5f60718293a4b5c6d7e (5e83dbc)",
        "2026-01-01T12:00:00.000Z INFO broker::proxy: upstream ok elapsed_ms=532",
        "2026-03-04T05:06:07+01:00 WARN retrying",
        r#"{"image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", "width": 1}"#,
        "missing Authorization header: expected Bearer",
        "Bearer",
        "token type Bearer not accepted",
        r#"127.0.0.1 - - [01/Jan/2026:12:00:00 +0000] "POST /v1/chat/completions HTTP/1.1" 200 1534 "-" "python-requests/2.31" 0.532"#,
        "INFO actix_web::middleware::logger: 10.0.0.7 \"GET /health HTTP/1.1\" 200 2 \"-\" \"curl/8.5.0\" 0.000104",
        "2026-01-01T12:00:00Z  INFO request{method=POST uri=/v1/messages version=HTTP/1.1}: tower_http::trace::on_response: finished processing request latency=812 ms status=200",
        "sk-",
        "the sk- prefix is reserved",
        r#"{"usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}}"#,
        r#"{"max_tokens": 100, "tokens": 123, "input_tokens": 17, "output_tokens": 4096}"#,
        r#"{"error": {"type": "invalid_request_error", "message": "max_tokens: must be <= 4096"}}"#,
        "provider=anthropic model=claude-sonnet status=429 retry_after_s=20",
        "migrated 3 rows in table provider_keys (key_version=2)",
        "password reset requested for user 17",
        "auth failed: authentication failed",
        "GET https://api.example.com/v1/models?limit=20&page=2 200",
        "see https://docs.example.com/guide#auth-section",
    ] {
        assert_untouched(&r, line);
    }
}

#[test]
fn provider_key_in_header_keeps_name_and_scheme() {
    let r = Redactor::new();
    let line = r#"headers={"authorization": "Bearer sk-ant-api03-abc123xyz-456def789ghij-klmnopqrstuvwx-3456yza789bcde-1234fghijklmnopby56aaaogaopaaaabc123xyzAA"}"#;
    assert_eq!(
        r.redact(line),
        r#"headers={"authorization": "Bearer [REDACTED:anthropic]"}"#
    );
}

#[test]
fn bearer_with_unknown_token_is_redacted() {
    let r = Redactor::new();
    assert_eq!(
        r.redact("Authorization: Bearer cfcabd11c7ed9a41b1a3e063c32d5114"),
        "Authorization: Bearer [REDACTED:bearer]"
    );
}

#[test]
fn url_credentials_keep_scheme_and_host() {
    let r = Redactor::new();
    assert_eq!(
        r.redact("connecting to postgres://broker:s3cr3t-Pa55@db.internal:5432/keys"),
        "connecting to postgres://[REDACTED:url-credentials]@db.internal:5432/keys"
    );
}

#[test]
fn secret_query_parameters_keep_their_name() {
    let r = Redactor::new();
    assert_eq!(
        r.redact("GET /v1/models?key=Zf3D0LXCM3EIMbgJpUNnkRtOfOueHznB&alt=json"),
        "GET /v1/models?key=[REDACTED:query-secret]&alt=json"
    );
    assert_eq!(
        r.redact("GET /cb?code=x&access_token=ya29.a0AfH6SMBx3kP9&state=1"),
        "GET /cb?code=x&access_token=[REDACTED:query-secret]&state=1"
    );
}

#[test]
fn secret_named_pairs_keep_name_delimiter_and_quotes() {
    let r = Redactor::new();
    assert_eq!(
        r.redact(r#"{"apiKey": "Zf3D0LXCM3EIMbgJpUNnkRtOfOueHznB"}"#),
        r#"{"apiKey": "[REDACTED:generic-secret]"}"#
    );
    assert_eq!(
        r.redact("<apiKey>Zf3D0LXCM3EIMbgJpUNnkRtOfOueHznB</apiKey>"),
        "<apiKey>[REDACTED:generic-secret]</apiKey>"
    );
    assert_eq!(
        r.redact(r#"DB_PASSWORD := "hunter2-Is-Not-Enough""#),
        r#"DB_PASSWORD := "[REDACTED:generic-secret]""#
    );
}

#[test]
fn json_escaped_private_key_body_is_removed() {
    let r = Redactor::new();
    let line = r#"{"err": "cannot parse key: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDAC4AWkdwKYSd8\nKs14IReLcYgADhoXk56ZzXI=\n-----END PRIVATE KEY-----"}"#;
    assert_eq!(
        r.redact(line),
        r#"{"err": "cannot parse key: -----BEGIN PRIVATE KEY-----[REDACTED:private-key]-----END PRIVATE KEY-----"}"#
    );
}

#[test]
fn keybroker_tool_tokens_and_admin_tokens_are_redacted() {
    let r = Redactor::new();
    let tool = "kb_Xq3vN8pL2mR7tY1wZ5cB9dF4gH6jK0sA3eU8iO2yT7r";
    assert_eq!(
        r.redact(&format!("tool={tool}")),
        "tool=[REDACTED:keybroker-token]"
    );
    let admin = "admin-Xq3vN8pL2mR7tY1wZ5cB9dF4gH6jK0sA";
    assert_eq!(
        r.redact(&format!("X-Admin: {admin}")),
        "X-Admin: [REDACTED:admin-token]"
    );
}

#[test]
fn registered_value_and_its_encodings_are_redacted_until_dropped() {
    use base64::Engine as _;
    let r = Redactor::new();
    let key = "vultr-has-no-prefix-6Q2YB7ZT3P";
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let line = format!("k={key} b={b64} u={b64url} p=vultr%2Dhas");
    let guard = r.register(key.as_bytes());
    assert!(guard.is_active());
    assert_eq!(
        r.redact(&line),
        "k=[REDACTED:exact] b=[REDACTED:exact] u=[REDACTED:exact] p=vultr%2Dhas"
    );
    drop(guard);
    assert_eq!(r.redact(&line), line);
}

#[test]
fn percent_encoded_registered_value_is_redacted() {
    let r = Redactor::new();
    let _g = r.register(b"p@ss/with+special=chars!");
    assert_eq!(
        r.redact("body=p%40ss%2Fwith%2Bspecial%3Dchars%21&x=1"),
        "body=[REDACTED:exact]&x=1"
    );
}

#[test]
fn registered_key_inside_basic_auth_base64_is_redacted() {
    use base64::Engine as _;
    let r = Redactor::new();
    let key = "AC-auth-token-without-shape-0123";
    let _g = r.register(key.as_bytes());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{key}"));
    let line = format!("Authorization: Basic {basic}");
    let out = r.redact(&line);
    assert!(!out.contains(&basic), "{out}");
    assert!(out.contains("[REDACTED:"), "{out}");
}

#[test]
fn short_values_are_refused_by_register() {
    let r = Redactor::new();
    let g = r.register(b"short");
    assert!(!g.is_active());
    assert_eq!(r.redact("short and sweet"), "short and sweet");
    assert_eq!(MIN_SECRET_LEN, 8);
}

#[test]
fn values_between_8_and_23_bytes_use_the_short_index() {
    let r = Redactor::new();
    let _g = r.register(b"9charsecr");
    assert_eq!(r.redact("a 9charsecr b"), "a [REDACTED:exact] b");
    assert_eq!(r.redact("a9charsecrb"), "a[REDACTED:exact]b");
}

#[test]
fn the_same_value_registered_twice_stays_until_both_drop() {
    let r = Redactor::new();
    let a = r.register(b"shared-provider-key-0123456789");
    let b = r.register(b"shared-provider-key-0123456789");
    drop(a);
    assert!(r.contains_secret("x shared-provider-key-0123456789"));
    drop(b);
    assert!(!r.contains_secret("x shared-provider-key-0123456789"));
}

#[test]
fn redact_with_removes_extra_values_for_one_call() {
    let r = Redactor::new();
    assert_eq!(
        r.redact_with("echo 0f9e8d7c6b5a49382716", &[b"0f9e8d7c6b5a49382716"]),
        "echo [REDACTED:exact]"
    );
    assert_eq!(
        r.redact("echo 0f9e8d7c6b5a49382716"),
        "echo 0f9e8d7c6b5a49382716"
    );
}

#[test]
fn registration_debug_shows_nothing_secret() {
    let r = Redactor::new();
    let g = r.register(b"do-not-print-me-ever-123");
    let dbg = format!("{g:?} {r:?}");
    assert!(!dbg.contains("do-not-print"), "{dbg}");
}

#[test]
fn counting_reports_one_per_marker() {
    let r = Redactor::new();
    let mut counts = Counts::new();
    let text =
        b"a=AKIAIOSFODNN7EXAMPL3 b=AKIAIOSFODNN7EXAMPL4 ghp_4U3LSowpDx8XvYE7A8GH56oxU5aWnY2mzIbV";
    let out = r.redact_counting(text, &mut counts);
    assert_eq!(counts.get(Kind::Aws), 2);
    assert_eq!(counts.get(Kind::GitHub), 1);
    assert_eq!(counts.total(), 3);
    assert_eq!(
        counts.iter().collect::<Vec<_>>(),
        vec![(Kind::GitHub, 1), (Kind::Aws, 2)]
    );
    assert!(!out.windows(4).any(|w| w == b"AKIA"));
}

#[test]
fn invalid_utf8_is_redacted_and_kept() {
    let r = Redactor::new();
    let mut bytes = vec![0xff, 0xfe, b' '];
    bytes.extend_from_slice(b"ghp_4U3LSowpDx8XvYE7A8GH56oxU5aWnY2mzIbV");
    bytes.push(0x80);
    let out = r.redact_bytes(&bytes);
    assert_eq!(&out[..], b"\xff\xfe [REDACTED:github]\x80");
}

#[test]
fn markers_name_their_kind() {
    for k in Kind::ALL {
        assert_eq!(marker(k), format!("[REDACTED:{}]", k.as_str()));
    }
}

#[test]
fn format_checks_accept_whole_keys_only() {
    assert!(matches_format(Kind::Anthropic, "sk-ant-api03-abc123xyz-456def789ghij-klmnopqrstuvwx-3456yza789bcde-1234fghijklmnopby56aaaogaopaaaabc123xyzAA"));
    assert!(matches_format(
        Kind::GitHub,
        "ghp_4U3LSowpDx8XvYE7A8GH56oxU5aWnY2mzIbV"
    ));
    assert!(matches_format(
        Kind::Stripe,
        "sk_live_DdBOfg1XfOkca8gKQ5umfoQGrTTLU1sAmiNe"
    ));
    assert!(matches_format(
        Kind::Resend,
        "re_zKa4RCko_Lhm9ost2YjNCctnPjbLw8Nop"
    ));
    assert!(matches_format(
        Kind::Railway,
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    ));
    assert!(!matches_format(
        Kind::GitHub,
        "ghp_4U3LSowpDx8XvYE7A8GH56oxU5aWnY2mzIbV\n"
    ));
    assert!(!matches_format(
        Kind::OpenAi,
        "sk-proj-Xi8tdMjHV6pmbBbwilTeT4BlbkFJ3UDnpdEwNNm6wVBpYM0o"
    ));
    assert!(!matches_format(Kind::GenericSecret, "hunter2hunter2"));
}

#[test]
fn inputs_the_fuzzer_once_broke_are_idempotent() {
    let r = Redactor::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let entries = std::fs::read_dir(&dir).expect("regression inputs directory exists");
    let mut seen = 0;
    for entry in entries {
        let bytes = std::fs::read(entry.expect("readable entry").path()).expect("readable file");
        let once = r.redact_bytes(&bytes).into_owned();
        assert_eq!(r.redact_bytes(&once).into_owned(), once);
        seen += 1;
    }
    assert!(seen > 0);
}
