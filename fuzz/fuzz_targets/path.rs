//! `ssogate::path::normalise` and `is_reserved` on arbitrary text.
//!
//! Properties (from the doc of `src/path.rs`): never panics; a normal form
//! starts with `/`, holds no `//`, no `.` or `..` segment, no `\` and no
//! control character, only valid upper-case `%XX` escapes that are neither
//! unreserved characters nor NUL (an encoded `/` or `\` stays encoded);
//! normalising it again gives the same string (idempotent).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use ssogate::path::{is_reserved, normalise};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let _ = is_reserved(input);
    let Ok(once) = normalise(input) else {
        return;
    };
    check_normal(input, &once);
    match normalise(&once) {
        Ok(twice) => assert_eq!(twice, once, "not idempotent: {input:?}"),
        Err(e) => panic!("normal form {once:?} (of {input:?}) is refused: {e}"),
    }
    // A path already in normal form without escapes is taken as it is.
    if input == once && !input.contains('%') {
        assert!(
            matches!(normalise(input), Ok(Cow::Borrowed(_))),
            "{input:?} is normal but was copied"
        );
    }
    // The gate decides on the normal form: it must agree with itself.
    let _ = is_reserved(&once);
});

fn check_normal(input: &str, out: &str) {
    assert!(
        out.starts_with('/'),
        "{out:?} (of {input:?}) is not absolute"
    );
    assert!(!out.contains("//"), "{out:?} (of {input:?}) holds //");
    assert!(!out.contains('\\'), "{out:?} (of {input:?}) holds \\");
    assert!(
        !out.chars().any(|c| c.is_ascii_control()),
        "{out:?} (of {input:?}) holds a control character"
    );
    assert!(
        !out.split('/').any(|s| s == "." || s == ".."),
        "{out:?} (of {input:?}) holds a dot segment"
    );
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = v else {
                panic!("{out:?} (of {input:?}) holds a bad %-escape at {i}");
            };
            assert!(
                hex.is_some_and(|h| h.bytes().all(|c| !c.is_ascii_lowercase())),
                "{out:?} (of {input:?}) holds lower-case hex at {i}"
            );
            assert!(
                !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
                "{out:?} (of {input:?}) keeps an encoded unreserved character at {i}"
            );
            assert!(v != 0, "{out:?} (of {input:?}) keeps an encoded NUL at {i}");
            i += 3;
        } else {
            i += 1;
        }
    }
}
