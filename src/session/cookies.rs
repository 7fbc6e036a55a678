//! The gate's cookie names, reading the `Cookie` header, and writing `Set-Cookie`.
//!
//! Names are fixed per deployment: on https the session cookie is
//! `__Host-ssogate` (its parts `__Host-ssogate_1of3` …) and sign-in state
//! cookies are `__Host-ssogate-login-<id>` (`__Host-`, so a sibling
//! subdomain cannot plant one: login CSRF); on plain http (loopback only)
//! the prefixes are dropped, as browsers require. Sign-in state cookies of
//! earlier versions (`__Secure-ssogate-login-…`) are still recognised as
//! the gate's and never forwarded.

use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, header};

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

    /// Whether a cookie (its name, or a `name=value` pair) is one the gate
    /// writes, in either deployment's spelling, and so never reaches the
    /// upstream. Application cookies that merely start with `ssogate` pass.
    pub fn is_ours(pair_or_name: &str) -> bool {
        let name = pair_or_name.split('=').next().unwrap_or_default().trim();
        if name.starts_with("__Host-ssogate-login-")
            || name.starts_with("__Secure-ssogate-login-")
            || name.starts_with("ssogate-login-")
        {
            return true;
        }
        match name
            .strip_prefix("__Host-ssogate")
            .or_else(|| name.strip_prefix("ssogate"))
        {
            Some("") => true,
            Some(rest) => {
                let b = rest.as_bytes();
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

/// Every `name=value` pair of the request's `Cookie` headers, borrowed, in order.
/// Pairs that are not valid text or have no `=` are skipped.
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = name.trim();
            (!name.is_empty()).then(|| (name, value.trim().trim_matches('"')))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(CookieNames::is_ours(n), "{n}");
        }
        for n in [
            "app",
            "session",
            "__Host-app",
            "ssogate_theme",
            "ssogate-app",
            "__Host-ssogatex",
        ] {
            assert!(!CookieNames::is_ours(n), "{n}");
        }
    }
}
