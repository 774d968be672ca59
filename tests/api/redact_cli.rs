//! `keybroker redact`, the real binary: stdin to stdout, secrets replaced by markers, everything
//! else byte for byte, in bounded memory.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

/// Provider keys of several shapes, each with the marker it must become.
fn planted() -> Vec<(String, &'static str)> {
    vec![
        (
            format!(
                "sk-proj-{}T3BlbkFJ{}",
                "Rk2vX9qLm4Tz8Wn1Pb6H", "Yc3Jd7Fs0Ga5Ue2Io9KxQ"
            ),
            "[REDACTED:openai]",
        ),
        (
            format!(
                "sk-ant-api03-{}AA",
                "x7Kq2Lm9Vb4Nc8Zp1Rt6Yw3Hs5Jd0Fg"
                    .repeat(3)
                    .get(..93)
                    .unwrap()
            ),
            "[REDACTED:anthropic]",
        ),
        (
            "AIzaSyD4f8Kq2Lm9Vb4Nc8Zp1Rt6Yw3Hs5Jd0Fg".to_owned(),
            "[REDACTED:google]",
        ),
        (
            "ghp_R8kq2Lm9Vb4Nc8Zp1Rt6Yw3Hs5Jd0Fg7XaQ2".to_owned(),
            "[REDACTED:github]",
        ),
        ("AKIAZ7QX2M3KD4HRTB6W".to_owned(), "[REDACTED:aws]"),
        (
            "sk_live_51Hq2Lm9Vb4Nc8Zp1Rt6Yw3Hs5".to_owned(),
            "[REDACTED:stripe]",
        ),
    ]
}

/// Runs `keybroker redact` with `input` on stdin (written from another thread, so a large input
/// cannot deadlock against a full stdout pipe).
fn redact(args: &[&str], input: Vec<u8>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .arg("redact")
        .args(args)
        .env_remove("KEYBROKER_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keybroker redact");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer thread");
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn keys_of_several_providers_become_markers_and_clean_lines_are_byte_identical() {
    let clean = [
        "127.0.0.1 - - [01/Jan/2025:10:00:00 +0000] \"GET /api/v1/keys HTTP/1.1\" 200 512 \"-\" \"curl/8.5\"\n",
        "{\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"route\":\"/api/v1/usage\",\"status\":200}}\r\n",
        "\n",
        "plain text with unicode: ключ, 鍵, clé — and tabs\tand trailing spaces   \n",
    ];
    let mut input = String::new();
    let mut expected = String::new();
    for (i, (key, marker)) in planted().iter().enumerate() {
        let line = clean[i % clean.len()];
        input.push_str(line);
        expected.push_str(line);
        input.push_str(&format!("upstream said: invalid key {key} (status 401)\n"));
        expected.push_str(&format!(
            "upstream said: invalid key {marker} (status 401)\n"
        ));
    }
    input.push_str("last line without a newline");
    expected.push_str("last line without a newline");

    let out = redact(&[], input.into_bytes());
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    assert_eq!(lossy(&out.stdout), expected);
    assert!(out.stderr.is_empty(), "{}", lossy(&out.stderr));
}

#[test]
fn a_log_with_nothing_to_redact_comes_out_byte_for_byte() {
    let mut input = Vec::new();
    for i in 0..2000 {
        input.extend_from_slice(
            format!(
                "2025-01-01T10:00:{:02}Z INFO request method=GET route=/api/v1/keys/{{id}} status=200 micros={i}\r\n",
                i % 60
            )
            .as_bytes(),
        );
    }
    input.extend_from_slice(b"{\"max_tokens\": 4096, \"token_type\": \"bearer\"}");
    let out = redact(&[], input.clone());
    assert!(out.status.success());
    assert!(out.stdout == input, "clean input was changed");
}

#[test]
fn empty_input_gives_empty_output_and_success() {
    let out = redact(&[], Vec::new());
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(out.stderr.is_empty(), "{}", lossy(&out.stderr));
}

#[test]
fn empty_input_with_stats_reports_a_zero_total() {
    let out = redact(&["--stats"], Vec::new());
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(lossy(&out.stderr), "total 0\n");
}

#[test]
fn bytes_that_are_not_utf8_are_kept_and_the_keys_beside_them_redacted() {
    let (key, marker) = planted().swap_remove(0);
    let mut input = b"latin-1 caf\xe9 and a lone \xff\xfe byte\n".to_vec();
    input.extend_from_slice(b"\xc3\x28 broken ");
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(b" \x80\x81\n");
    let mut expected = b"latin-1 caf\xe9 and a lone \xff\xfe byte\n".to_vec();
    expected.extend_from_slice(b"\xc3\x28 broken ");
    expected.extend_from_slice(marker.as_bytes());
    expected.extend_from_slice(b" \x80\x81\n");

    let out = redact(&[], input);
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    assert!(out.stdout == expected, "got {:?}", lossy(&out.stdout));
}

#[test]
fn a_line_longer_than_the_cap_is_redacted_wherever_it_is_cut() {
    // 3 MiB in one line (the cap is 1 MiB), keys every 64 bytes: wherever a cut falls it is
    // within a few bytes of a key.
    let (key, marker) = planted().swap_remove(0);
    let mut input = String::new();
    let mut expected = String::new();
    let mut n = 0u64;
    while input.len() < 3 << 20 {
        input.push_str(&format!("k={key} "));
        expected.push_str(&format!("k={marker} "));
        n += 1;
    }
    input.push('\n');
    expected.push('\n');

    let out = redact(&["--stats"], input.into_bytes());
    assert!(out.status.success(), "{}", lossy(&out.stderr));
    assert!(lossy(&out.stdout) == expected, "a key was cut or missed");
    assert_eq!(lossy(&out.stderr), format!("openai {n}\ntotal {n}\n"));
}

#[test]
fn stats_count_each_kind_sorted_by_name_on_stderr_and_leave_stdout_alone() {
    let mut input = String::new();
    for (key, _) in planted() {
        input.push_str(&format!("one {key}\n"));
    }
    let (aws, _) = planted().swap_remove(4);
    input.push_str(&format!(
        "again {aws}\nAuthorization: Bearer Zf3D0LXa9QpR7mK2vN8w\n"
    ));

    let plain = redact(&[], input.clone().into_bytes());
    let out = redact(&["--stats"], input.into_bytes());
    assert!(out.status.success());
    assert_eq!(out.stdout, plain.stdout);
    assert_eq!(
        lossy(&out.stderr),
        "anthropic 1\naws 2\nbearer 1\ngithub 1\ngoogle 1\nopenai 1\nstripe 1\ntotal 8\n"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .arg("redact")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let line = "a clean line that is repeated many times over\n".repeat(1000);
        for _ in 0..2000 {
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(out.stderr.is_empty(), "{}", lossy(&out.stderr));
}

#[test]
fn an_unreadable_input_is_a_one_line_error_and_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .arg("redact")
        .stdin(std::fs::File::open(dir.path()).expect("open dir"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = lossy(&out.stderr);
    assert!(err.starts_with("error: reading standard input:"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}
