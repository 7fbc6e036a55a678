//! The gate's cookie names, reading the `Cookie` header, and writing `Set-Cookie`.
//!
//! Names are fixed per deployment: on https the session cookie is
//! `__Host-ssogate` (its parts `__Host-ssogate_1of3` …) and sign-in state
//! cookies are `__Host-ssogate-login-<id>` (`__Host-`, so a sibling
//! subdomain cannot plant one: login CSRF); on plain http (loopback only)
//! the prefixes are dropped, as browsers require. Sign-in state cookies of
//! earlier versions (`__Secure-ssogate-login-…`) are still recognised as
//! the gate's and never forwarded.

use crate::fields::Fields;
use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue};

/// Largest number of parts a session may be split into.
pub const MAX_PARTS: usize = 8;

/// Where a cookie name sits in the gate's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The session in one cookie.
    Whole,
    /// Part `index` (1-based) of `count`.
    Of { index: usize, count: usize },
}

#[derive(Clone, Debug)]
pub struct CookieNames {
    secure: bool,
    session: &'static str,
    login_prefix: &'static str,
}

impl CookieNames {
    pub fn new(secure: bool) -> Self {
        if secure {
            Self {
                secure,
                session: "__Host-ssogate",
                login_prefix: "__Host-ssogate-login-",
            }
        } else {
            Self {
                secure,
                session: "ssogate",
                login_prefix: "ssogate-login-",
            }
        }
    }

    pub fn session(&self) -> &'static str {
        self.session
    }

    pub fn login_prefix(&self) -> &'static str {
        self.login_prefix
    }

    /// Whether a cookie name is one the gate writes, in either deployment's
    /// spelling, and so never reaches the upstream. Application cookies that
    /// merely start with `ssogate` pass.
    pub fn is_our_name(name: &[u8]) -> bool {
        if name.starts_with(b"__Host-ssogate-login-")
            || name.starts_with(b"__Secure-ssogate-login-")
            || name.starts_with(b"ssogate-login-")
        {
            return true;
        }
        match name
            .strip_prefix(b"__Host-ssogate")
            .or_else(|| name.strip_prefix(b"ssogate"))
        {
            Some([]) => true,
            Some(b) => {
                b.len() == 5
                    && b[0] == b'_'
                    && b[1].is_ascii_digit()
                    && &b[2..4] == b"of"
                    && b[4].is_ascii_digit()
            }
            None => false,
        }
    }

    /// Parses a session cookie name without allocating: `base` or
    /// `base_<i>of<n>` with single digits `1 <= i <= n <= 8`; anything else,
    /// however long its digits, is not a session part.
    pub fn session_part(&self, name: &str) -> Option<Part> {
        let rest = name.strip_prefix(self.session)?;
        if rest.is_empty() {
            return Some(Part::Whole);
        }
        let b = rest.as_bytes();
        if b.len() != 5 || b[0] != b'_' || &b[2..4] != b"of" {
            return None;
        }
        let (index, count) = (digit(b[1])?, digit(b[4])?);
        (1 <= index && index <= count && (2..=MAX_PARTS).contains(&count))
            .then_some(Part::Of { index, count })
    }

    /// The name of one part of a split session.
    pub fn part_name(&self, part: Part) -> String {
        match part {
            Part::Whole => self.session.to_string(),
            Part::Of { index, count } => format!("{}_{index}of{count}", self.session),
        }
    }

    /// `Set-Cookie` for a gate cookie: HttpOnly, SameSite=Lax, Secure on https.
    pub fn set(
        &self,
        name: &str,
        value: &str,
        path: &str,
        max_age_secs: i64,
    ) -> Option<HeaderValue> {
        let c = Cookie::build((name, value))
            .path(path)
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(max_age_secs.max(0)))
            .build();
        HeaderValue::from_str(&c.encoded().to_string()).ok()
    }

    /// `Set-Cookie` that deletes a gate cookie.
    pub fn remove(&self, name: &str, path: &str) -> Option<HeaderValue> {
        self.set(name, "", path, 0)
    }
}

fn digit(b: u8) -> Option<usize> {
    b.is_ascii_digit().then(|| usize::from(b - b'0'))
}

/// Every `name=value` pair of the request's `Cookie` headers, borrowed, in
/// order, as bytes: names and values trimmed of spaces, values of their
/// quotes; pairs with no `=` or an empty name are skipped. Each pair is read
/// on its own, so one cookie that is not ASCII (another application's, on
/// the same site) hides none of the others.
pub fn request_cookie_bytes(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    cookie_bytes(Fields::Map(headers))
}

/// [`request_cookie_bytes`] over header fields in either form.
pub fn cookie_bytes(fields: Fields<'_>) -> impl Iterator<Item = (&[u8], &[u8])> {
    fields.values("cookie").flat_map(pairs).filter_map(|pair| {
        let (name, value) = pair.split()?;
        (!name.is_empty()).then_some((name, value))
    })
}

/// [`request_cookie_bytes`], for pairs whose name and value are UTF-8.
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    request_cookie_bytes(headers).filter_map(|(name, value)| {
        Some((
            std::str::from_utf8(name).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    })
}

/// One `;`-separated piece of a `Cookie` header, trimmed of spaces (maybe
/// empty, maybe without `=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair<'a>(pub &'a [u8]);

impl<'a> Pair<'a> {
    /// Name and value (the value without its quotes), if there is an `=`.
    pub fn split(self) -> Option<(&'a [u8], &'a [u8])> {
        let at = memchr::memchr(b'=', self.0)?;
        let value = self.0[at + 1..].trim_ascii();
        let unquoted = match value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        };
        Some((self.0[..at].trim_ascii(), unquoted))
    }

    /// The cookie's name (all of it when there is no `=`).
    pub fn name(self) -> &'a [u8] {
        memchr::memchr(b'=', self.0).map_or(self.0, |at| self.0[..at].trim_ascii())
    }
}

/// The pieces of one `Cookie` header value, found with a vectorised search
/// for `;` (a session cookie is kilobytes long, and every request has one).
pub fn pairs(value: &[u8]) -> impl Iterator<Item = Pair<'_>> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let v = rest?;
        let (piece, after) = match memchr::memchr(b';', v) {
            Some(at) => (&v[..at], Some(&v[at + 1..])),
            None => (v, None),
        };
        rest = after;
        Some(Pair(piece.trim_ascii()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn part_names_are_parsed_strictly() {
        let n = CookieNames::new(true);
        assert_eq!(n.session_part("__Host-ssogate"), Some(Part::Whole));
        assert_eq!(
            n.session_part("__Host-ssogate_2of3"),
            Some(Part::Of { index: 2, count: 3 })
        );
        for bad in [
            "__Host-ssogate_1of10000000000",
            "__Host-ssogate_0of3",
            "__Host-ssogate_4of3",
            "__Host-ssogate_1of9",
            "__Host-ssogate_1of1",
            "__Host-ssogate_xofy",
            "__Host-ssogatex",
            "ssogate",
            "other",
        ] {
            assert_eq!(n.session_part(bad), None, "{bad}");
        }
        assert_eq!(
            n.part_name(Part::Of { index: 1, count: 2 }),
            "__Host-ssogate_1of2"
        );
    }

    #[test]
    fn cookie_header_pairs_are_read_from_every_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; b=\"2\";;junk; =x"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        let got: Vec<_> = request_cookies(&h).collect();
        assert_eq!(got, vec![("a", "1"), ("b", "2"), ("c", "3")]);
    }

    #[test]
    fn a_cookie_that_is_not_ascii_hides_none_of_the_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"theme=gr\xfcn; ssogate=sealed; lang=d\xc3\xa9").unwrap(),
        );
        let got: Vec<_> = request_cookies(&h).collect();
        // Not UTF-8: left out; UTF-8 but not ASCII: kept.
        assert_eq!(got, vec![("ssogate", "sealed"), ("lang", "dé")]);
        let bytes: Vec<_> = request_cookie_bytes(&h).map(|(n, _)| n).collect();
        assert_eq!(bytes, vec![&b"theme"[..], b"ssogate", b"lang"]);
    }

    #[test]
    fn pairs_are_split_and_trimmed_as_browsers_send_them() {
        let got: Vec<_> = pairs(b" a=1 ;b = \"two\" ;; c ;=x;d=\"").collect();
        assert_eq!(
            got,
            vec![
                Pair(b"a=1"),
                Pair(b"b = \"two\""),
                Pair(b""),
                Pair(b"c"),
                Pair(b"=x"),
                Pair(b"d=\""),
            ]
        );
        let split: Vec<_> = got.iter().map(|p| p.split()).collect();
        assert_eq!(
            split,
            vec![
                Some((&b"a"[..], &b"1"[..])),
                Some((&b"b"[..], &b"two"[..])),
                None,
                None,
                Some((&b""[..], &b"x"[..])),
                Some((&b"d"[..], &b"\""[..])),
            ]
        );
        assert_eq!(Pair(b"c").name(), b"c");
        assert_eq!(Pair(b"n =v").name(), b"n");
    }

    #[test]
    fn set_cookie_has_the_safe_attributes() {
        let v = CookieNames::new(true)
            .set("__Host-ssogate", "v", "/", 60)
            .unwrap();
        let s = v.to_str().unwrap();
        for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=60"] {
            assert!(s.contains(attr), "{s} lacks {attr}");
        }
        let plain = CookieNames::new(false)
            .set("ssogate", "v", "/", 60)
            .unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn ours_covers_both_name_families() {
        for n in [
            "__Host-ssogate",
            "__Host-ssogate_1of2",
            "__Secure-ssogate-login-abc",
            "__Host-ssogate-login-abc",
            "ssogate",
            "ssogate-login-x",
        ] {
            assert!(CookieNames::is_our_name(n.as_bytes()), "{n}");
        }
        for n in [
            "app",
            "session",
            "__Host-app",
            "ssogate_theme",
            "ssogate-app",
            "__Host-ssogatex",
        ] {
            assert!(!CookieNames::is_our_name(n.as_bytes()), "{n}");
        }
    }
}
