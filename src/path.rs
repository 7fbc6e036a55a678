//! The one normal form of a request path, taken before any decision and
//! forwarded as it is, so the gate and the upstream always judge the same
//! path.
//!
//! - `%XX` must be valid hex; an encoded unreserved character (`%73` for
//!   `s`, `%2E` for `.`) is decoded, any other stays encoded with upper-case
//!   hex. An encoded `/` or `\` stays encoded: it is data inside a segment
//!   (file names of a collaboration server hold them), never a separator for
//!   the gate's decisions, and no path is exempt from authentication, so an
//!   upstream that decodes it gains nothing. An encoded NUL is refused.
//! - A literal `\` or control character is refused (some servers read `\` as `/`).
//! - Runs of `/` become one; `.` and `..` segments are resolved (RFC 3986
//!   5.2.4), and a `..` above the root is refused.
//!
//! Paths already in normal form (nearly all) are returned borrowed.

use std::borrow::Cow;

/// Why a path was refused (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path holds an invalid percent-encoding")]
    BadEncoding,
    #[error("the path holds an encoded NUL")]
    EncodedNul,
    #[error("the path holds a backslash or control character")]
    BadCharacter,
    #[error("the path climbs above the root")]
    AboveRoot,
}

/// The normal form of `path` (no query), or why it is refused.
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    Ok(Cow::Owned(resolve(&decoded)?))
}

/// Whether the first segment is `sso` in any case, with trailing dots
/// (Windows servers drop them): such paths belong to the gate, whichever
/// spelling reaches it, and are never forwarded.
pub fn is_reserved(normal: &str) -> bool {
    let first = normal
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    first.eq_ignore_ascii_case("sso")
}

fn is_normal(b: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' => return false,
            c if c.is_ascii_control() => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' && is_dot_segment(&b[i..]) => return false,
            _ => {}
        }
        prev = c;
    }
    true
}

/// Whether `rest` (starting at a `.` right after `/`) is a `.` or `..` segment.
fn is_dot_segment(rest: &[u8]) -> bool {
    let end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
    matches!(&rest[..end], b"." | b"..")
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(b: &[u8]) -> Result<Vec<u8>, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEncoding);
            };
            let v = hi << 4 | lo;
            if v == 0 {
                return Err(PathError::EncodedNul);
            }
            if is_unreserved(v) {
                out.push(v);
            } else {
                out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
            }
            i += 3;
        } else if c == b'\\' || c.is_ascii_control() {
            return Err(PathError::BadCharacter);
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

/// Merges slashes and resolves dot segments; keeps a trailing slash.
fn resolve(b: &[u8]) -> Result<String, PathError> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = b.split(|&c| c == b'/').skip(1).collect();
    let mut trailing_slash = false;
    for (n, seg) in parts.iter().enumerate() {
        let last = n + 1 == parts.len();
        match *seg {
            b"" => trailing_slash = last,
            b"." => trailing_slash = last,
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(b.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Only ASCII bytes were decoded, so UTF-8 in the input stays valid.
    String::from_utf8(out).map_err(|_| PathError::BadCharacter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalise(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_as_they_are() {
        for p in [
            "/",
            "/app",
            "/app/x.js",
            "/a/.well-known/b",
            "/a..b/c",
            "/x/",
        ] {
            assert!(
                matches!(normalise(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn tricks_resolve_to_what_the_upstream_would_see() {
        assert_eq!(n("/sso/../x").unwrap(), "/x");
        assert_eq!(n("//sso/healthz").unwrap(), "/sso/healthz");
        assert_eq!(n("/%73so/logout").unwrap(), "/sso/logout");
        assert_eq!(n("/app/%2e%2E/sso/userinfo").unwrap(), "/sso/userinfo");
        assert_eq!(n("/a/./b//c/").unwrap(), "/a/b/c/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a%20b/%7euser").unwrap(), "/a%20b/~user");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb", "reserved stays encoded");
        assert_eq!(
            n("/files/a%2fb").unwrap(),
            "/files/a%2Fb",
            "a slash in a name"
        );
        assert_eq!(n("/sso%2Flogout").unwrap(), "/sso%2Flogout", "one segment");
        assert!(
            !is_reserved("/sso%2Flogout"),
            "so it needs a session like any path"
        );
        assert_eq!(n("/a%5cb").unwrap(), "/a%5Cb");
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(n("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/%2e%2e/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(n("/a%4"), Err(PathError::BadEncoding));
        assert_eq!(n("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(n("/a\\b"), Err(PathError::BadCharacter));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn every_spelling_of_the_gate_prefix_is_reserved() {
        for p in [
            "/sso",
            "/sso/x",
            "/SSO/logout",
            "/Sso./x",
            "/sso../",
            "/sSo",
        ] {
            assert!(is_reserved(p), "{p}");
        }
        for p in ["/", "/ssox", "/app/sso", "/s.so"] {
            assert!(!is_reserved(p), "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn normal_forms_are_stable_and_never_climb(p in "/[a-zA-Z0-9%./_~-]{0,40}") {
            if let Ok(once) = normalise(&p) {
                let twice = normalise(&once).map(Cow::into_owned);
                proptest::prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
                proptest::prop_assert!(once.starts_with('/'));
                proptest::prop_assert!(!once.contains("//"));
                proptest::prop_assert!(!once.split('/').any(|s| s == ".." || s == "."));
            }
        }
    }
}
