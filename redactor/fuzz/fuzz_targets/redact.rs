//! Arbitrary bytes through every entry point: nothing may panic, redaction must be idempotent,
//! and a value registered from the input must not survive in the output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redactor::{Counts, Redactor};
use std::sync::OnceLock;

static REDACTOR: OnceLock<Redactor> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let r = REDACTOR.get_or_init(Redactor::new);
    let once = r.redact_bytes(data);
    let twice = r.redact_bytes(&once);
    assert_eq!(once, twice, "redact_bytes is not idempotent");

    let mut counts = Counts::new();
    let _ = r.redact_counting(data, &mut counts);

    if let Ok(text) = std::str::from_utf8(data) {
        let out = r.redact(text);
        assert_eq!(r.contains_secret(text), out != text);
        assert_eq!(r.redact(&out), out, "redact is not idempotent");
    }

    // Register a slice of the input and check it is gone from the whole.
    if data.len() >= 24 {
        let (secret, _) = data.split_at(12 + usize::from(data[0] % 12));
        // A value that is part of a marker would reappear in the marker itself.
        let in_marker = redactor::Kind::ALL
            .iter()
            .any(|k| memchr_find(redactor::marker(*k).as_bytes(), secret).is_some());
        if !in_marker && !secret.contains(&b'[') && !secret.contains(&b']') {
            let reg = r.register(secret);
            let out = r.redact_bytes(data);
            assert!(
                memchr_find(&out, secret).is_none(),
                "registered value survived"
            );
            drop(reg);
        }
    }
});

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
