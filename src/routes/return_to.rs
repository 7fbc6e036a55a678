//! The open-redirect guard: where a browser may land after signing in.
//!
//! Only a path on this gate is accepted. Anything a browser could read as
//! another origin — `//host`, `/\host`, a scheme, control characters that
//! browsers strip, and the percent-encoded forms of all of these — falls back
//! to `/`. Paths under `/sso/` fall back too (landing on sign-out after
//! signing in helps nobody).

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

const MAX_LEN: usize = 2048;
/// Layers of percent-encoding looked through.
const DECODE_ROUNDS: usize = 3;
/// Characters re-encoded before the path goes into a `Location` header.
const LOCATION_UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'^');

/// The landing path for a raw (already query-decoded) `rd` value.
pub fn sanitize(rd: Option<&str>) -> String {
    match rd {
        Some(rd) if is_safe(rd) => utf8_percent_encode(rd, LOCATION_UNSAFE).to_string(),
        _ => "/".to_string(),
    }
}

fn is_safe(rd: &str) -> bool {
    if rd.len() > MAX_LEN || !looks_local(rd) || is_gates(rd) {
        return false;
    }
    let mut current = rd.to_string();
    for _ in 0..DECODE_ROUNDS {
        let decoded = match percent_decode_str(&current).decode_utf8() {
            Ok(d) => d.into_owned(),
            Err(_) => return false,
        };
        if decoded == current {
            return true;
        }
        if !looks_local(&decoded) || is_gates(&decoded) {
            return false;
        }
        current = decoded;
    }
    // Still changing after several rounds: refuse rather than guess.
    false
}

/// Whether a layer's path is the gate's own, judged as the router judges
/// it: in normal form (`/x/../sso`, `/%73so`), any spelling of the prefix
/// (`/SSO`, `/sso.`). A path with no normal form is refused as well.
///
/// Both the raw path and its normal form are judged: a browser resolves
/// `..` without merging slashes, so `/sso//..` is `/sso/` to it though it
/// is `/` in the gate's normal form.
fn is_gates(layer: &str) -> bool {
    let path = layer.split(['?', '#']).next().unwrap_or_default();
    crate::path::is_reserved(path)
        || crate::path::normalise(path).map_or(true, |p| crate::path::is_reserved(&p))
}

/// One layer: starts with a single `/`, no backslash, no control characters
/// and no whitespace but the plain space. A space after the leading `/` is
/// harmless (browsers strip only leading and trailing ones, and it leaves as
/// `%20`), and file names with spaces are common: refusing it sent users to
/// `/` instead of `/docs/My%20File.txt`.
fn looks_local(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && b.get(1) != Some(&b'/')
        && !s.contains('\\')
        && !s
            .chars()
            .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::sanitize;

    /// Found by the `return_to` fuzz target: spellings of the gate's own
    /// paths that the router treats as `/sso/…` slipped through.
    #[test]
    fn every_spelling_of_the_gates_paths_falls_back() {
        for rd in [
            "/%73so",
            "/SSO/logout",
            "/x/../sso/logout",
            "/app/%2e%2e/sso/logout?x=1",
            "/sso?next=1",
            "/sso./logout",
            "/sso#x",
            "/sso//..",
        ] {
            assert_eq!(sanitize(Some(rd)), "/", "{rd}");
        }
        assert_eq!(sanitize(Some("/ssox/a")), "/ssox/a");
        assert_eq!(sanitize(Some("/files/a%2Fb?q=1")), "/files/a%2Fb?q=1");
    }

    #[test]
    fn local_paths_are_kept() {
        assert_eq!(sanitize(Some("/")), "/");
        assert_eq!(
            sanitize(Some("/app/page?x=1&y=%2F#frag")),
            "/app/page?x=1&y=%2F#frag"
        );
        assert_eq!(sanitize(Some("/a b")), "/a%20b");
        assert_eq!(
            sanitize(Some("/docs/My%20File.txt?q=a%20b")),
            "/docs/My%20File.txt?q=a%20b"
        );
    }

    #[test]
    fn every_off_site_form_falls_back() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/%2Fevil.example",
            "/%2F%2Fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%255Cevil.example",
            "/%25252F%25252Fevil",
            "/\t/evil.example",
            "/%09/evil.example",
            "/\r\nSet-Cookie: x=1",
            "/%0d%0aSet-Cookie:x=1",
            "/sso/logout",
            "/%73so/logout",
            "/%ff",
        ] {
            assert_eq!(sanitize(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(sanitize(None), "/");
    }

    proptest! {
        #[test]
        fn never_leaves_the_origin(rd in "\\PC{0,40}", prefix in prop::sample::select(vec!["", "/", "//", "/\\", "/%2f", "https:"])) {
            let input = format!("{prefix}{rd}");
            let out = sanitize(Some(&input));
            let base = url::Url::parse("https://gate.example").unwrap();
            let landed = base.join(&out).unwrap();
            prop_assert_eq!(landed.origin(), base.origin());
            prop_assert!(out.bytes().all(|b| (0x21..0x7f).contains(&b)), "{:?} is not header-safe", out);
        }
    }
}
