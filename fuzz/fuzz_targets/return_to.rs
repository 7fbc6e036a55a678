//! `ssogate::routes::return_to::sanitize` on arbitrary text: the open-redirect
//! guard.
//!
//! Properties (from the doc of `src/routes/return_to.rs`): never panics; the
//! landing path starts with one `/`, never `//` or `/\`, holds no control
//! character and is safe in a `Location` header; and no layer of it, percent-
//! decoded up to three times, starts with `//` or `/\`, holds a backslash,
//! a control character or a scheme (`:` before the first `/`), or lies under
//! `/sso/` as the gate itself reads a path (`ssogate::path::normalise` then
//! `is_reserved`: any case, dot segments resolved, as a browser would).
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;
use ssogate::path::{is_reserved, normalise};
use ssogate::routes::return_to::sanitize;

fuzz_target!(|data: &[u8]| {
    let Ok(rd) = std::str::from_utf8(data) else {
        return;
    };
    let out = sanitize(Some(rd));
    if out == "/" {
        return;
    }
    let fail = |why: &str| -> ! { panic!("{rd:?} lands on {out:?}: {why}") };
    if !out.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        fail("not printable ASCII, unsafe in a Location header");
    }
    if http::HeaderValue::from_str(&out).is_err() {
        fail("not a header value");
    }
    let mut layer = out.clone().into_bytes();
    // Layer 0 is what the browser gets; layers 1..=3 what a server that
    // decodes once, twice or three times would see.
    for round in 0..=3 {
        check_local(&layer).unwrap_or_else(|why| fail(&format!("layer {round}: {why}")));
        let next: Vec<u8> = percent_decode(&layer).collect();
        if next == layer {
            break;
        }
        layer = next;
    }
    // A second pass over the result leaves it alone: it is already safe
    // (unless escaping made it longer than the guard reads).
    if out.len() <= 2048 {
        assert_eq!(sanitize(Some(&out)), out, "not stable for {rd:?}");
    }
});

fn check_local(b: &[u8]) -> Result<(), &'static str> {
    if b.first() != Some(&b'/') {
        return Err("does not start with /");
    }
    if matches!(b.get(1), Some(b'/' | b'\\')) {
        return Err("starts with // or /\\ (another origin)");
    }
    if b.contains(&b'\\') {
        return Err("holds a backslash");
    }
    if b.iter().any(|c| c.is_ascii_control()) {
        return Err("holds a control character");
    }
    let first_slash = b.iter().position(|&c| c == b'/').unwrap_or(b.len());
    if b[..first_slash].contains(&b':') {
        return Err("holds a scheme");
    }
    if b.starts_with(b"/sso/") || b == b"/sso" {
        return Err("lies under /sso/");
    }
    // What the browser requests: the path before any query or fragment, with
    // dot segments resolved; the gate keeps what it reserves for itself.
    let end = b
        .iter()
        .position(|&c| c == b'?' || c == b'#')
        .unwrap_or(b.len());
    let path = String::from_utf8_lossy(&b[..end]);
    if normalise(&path).is_ok_and(|n| is_reserved(&n)) {
        return Err("lies under /sso/ as the gate reads the path");
    }
    Ok(())
}
