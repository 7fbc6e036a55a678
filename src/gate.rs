//! The decision: forward, send to sign-in, or refuse. Pure: no I/O, and the
//! time comes in as a parameter so expiry is tested without clocks.

use http::{HeaderMap, Method};

use crate::session::Session;

/// What the gate holds about the caller's credentials.
#[derive(Debug)]
pub enum Credential<'a> {
    Session(&'a Session),
    /// A bearer token that verified, valid until this time.
    Bearer {
        expires_at: u64,
    },
    /// A bearer token that did not verify.
    InvalidBearer,
    None,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A browser navigation without a usable session: 302 to sign in.
    SignIn,
    /// Anything else without credentials: 401.
    Unauthorized {
        invalid_token: bool,
    },
}

/// A browser navigation: `GET`/`HEAD` whose `Accept` includes `text/html`.
/// IDE plugins and CLIs send no such `Accept`, so they get 401, never a page.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD) && crate::respond::wants_html(headers)
}

pub fn decide(navigation: bool, credential: Credential<'_>, now: u64) -> Decision {
    let challenge = |invalid_token: bool| {
        if navigation && !invalid_token {
            Decision::SignIn
        } else {
            Decision::Unauthorized { invalid_token }
        }
    };
    match credential {
        Credential::Session(s) if s.expires_at > now => Decision::Allow,
        Credential::Session(_) => challenge(false),
        Credential::Bearer { expires_at } if expires_at + crate::gate::BEARER_GRACE > now => {
            Decision::Allow
        }
        Credential::Bearer { .. } | Credential::InvalidBearer => challenge(true),
        Credential::None => challenge(false),
    }
}

/// Bearer expiry was already checked with the provider's leeway; this only
/// guards against a stale verification result.
pub const BEARER_GRACE: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn session(expires_at: u64) -> Session {
        Session {
            id: "i".into(),
            option: "oidc".into(),
            identity: Identity {
                sub: "a".into(),
                ..Default::default()
            },
            sid: None,
            created_at: 0,
            expires_at,
            refresh_token: None,
            id_token: None,
        }
    }

    #[test]
    fn valid_session_is_allowed_and_expired_is_challenged() {
        let s = session(100);
        assert_eq!(decide(true, Credential::Session(&s), 99), Decision::Allow);
        assert_eq!(decide(true, Credential::Session(&s), 100), Decision::SignIn);
        assert_eq!(
            decide(false, Credential::Session(&s), 100),
            Decision::Unauthorized {
                invalid_token: false
            }
        );
    }

    #[test]
    fn navigation_gets_sign_in_and_apis_get_401() {
        assert_eq!(decide(true, Credential::None, 0), Decision::SignIn);
        assert_eq!(
            decide(false, Credential::None, 0),
            Decision::Unauthorized {
                invalid_token: false
            }
        );
        assert_eq!(
            decide(true, Credential::InvalidBearer, 0),
            Decision::Unauthorized {
                invalid_token: true
            }
        );
        assert_eq!(
            decide(false, Credential::Bearer { expires_at: 10 }, 5),
            Decision::Allow
        );
    }

    #[test]
    fn navigation_needs_get_or_head_and_html() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT,
            "text/html,application/xhtml+xml".parse().unwrap(),
        );
        assert!(is_navigation(&Method::GET, &h));
        assert!(is_navigation(&Method::HEAD, &h));
        assert!(!is_navigation(&Method::POST, &h));
        h.insert(http::header::ACCEPT, "application/json".parse().unwrap());
        assert!(!is_navigation(&Method::GET, &h));
        assert!(!is_navigation(&Method::GET, &HeaderMap::new()));
    }
}
