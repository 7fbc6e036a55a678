//! The decision: forward, send to sign-in, or refuse. Pure: no I/O, and the
//! time comes in as a parameter so expiry is tested without clocks.

use http::{HeaderMap, Method};

use crate::session::{MAX_COOKIE_AGE_SECS, Session};

/// What the gate holds about the caller's credentials.
#[derive(Debug)]
pub enum Credential<'a> {
    Session {
        session: &'a Session,
        /// Its login option can refresh it and it carries a refresh token.
        refreshable: bool,
    },
    /// A bearer token that verified, valid until this time.
    Bearer {
        expires_at: u64,
    },
    /// A bearer token that did not verify.
    InvalidBearer,
    None,
}

/// How sessions age, in seconds (from [`crate::config::SessionPolicy`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// Refresh this long before expiry.
    pub refresh_skew: u64,
    /// Absolute session lifetime, if any.
    pub max_age: Option<u64>,
}

impl From<crate::config::SessionPolicy> for Policy {
    fn from(p: crate::config::SessionPolicy) -> Self {
        Policy {
            refresh_skew: p.refresh_skew.as_secs(),
            max_age: p.max_age.map(|d| d.as_secs()),
        }
    }
}

impl Policy {
    /// When a refreshable session is due for a refresh: `refresh_skew`
    /// before its tokens expire, or halfway through their lifetime when they
    /// live shorter than twice the skew (30 s tokens with the default 60 s
    /// skew would otherwise be refreshed on every request).
    pub fn refresh_at(&self, session: &Session) -> u64 {
        let lifetime = session.expires_at.saturating_sub(session.issued_at);
        let early = if session.issued_at == 0 {
            self.refresh_skew
        } else {
            self.refresh_skew.min(lifetime / 2)
        };
        session.expires_at.saturating_sub(early)
    }

    /// When a session ends at the latest, refreshes or not: its maximum age,
    /// and never later than its cookie's lifetime ([`MAX_COOKIE_AGE_SECS`]),
    /// so a replayed copy that ignores `Max-Age` is refused too and
    /// revocations need not outlive that.
    pub fn hard_end(&self, session: &Session) -> u64 {
        let cookie_end = session.created_at.saturating_add(MAX_COOKIE_AGE_SECS);
        self.max_age.map_or(cookie_end, |age| {
            session.created_at.saturating_add(age).min(cookie_end)
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The session's tokens expire (within the skew): refresh them first.
    Refresh,
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

pub fn decide(navigation: bool, credential: Credential<'_>, policy: &Policy, now: u64) -> Decision {
    let challenge = |invalid_token: bool| {
        if navigation && !invalid_token {
            Decision::SignIn
        } else {
            Decision::Unauthorized { invalid_token }
        }
    };
    match credential {
        Credential::Session { session, .. } if policy.hard_end(session) <= now => challenge(false),
        Credential::Session {
            session,
            refreshable,
        } => {
            let fresh = now < policy.refresh_at(session);
            match (fresh, refreshable, session.expires_at > now) {
                (true, _, _) => Decision::Allow,
                (false, true, _) => Decision::Refresh,
                // Inside the skew with nothing to refresh with: use what is left.
                (false, false, true) => Decision::Allow,
                (false, false, false) => challenge(false),
            }
        }
        Credential::Bearer { expires_at } if expires_at + BEARER_GRACE > now => Decision::Allow,
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
            issued_at: 0,
            expires_at,
            refresh_token: None,
            id_token: None,
        }
    }

    const NO_TOKEN: Decision = Decision::Unauthorized {
        invalid_token: false,
    };
    const BAD_TOKEN: Decision = Decision::Unauthorized {
        invalid_token: true,
    };

    #[test]
    fn valid_session_is_allowed_and_expired_is_challenged() {
        let s = session(100);
        let p = Policy::default();
        let c = || Credential::Session {
            session: &s,
            refreshable: false,
        };
        assert_eq!(decide(true, c(), &p, 99), Decision::Allow);
        assert_eq!(decide(true, c(), &p, 100), Decision::SignIn);
        assert_eq!(decide(false, c(), &p, 100), NO_TOKEN);
    }

    #[test]
    fn refreshable_sessions_refresh_within_the_skew_and_after_expiry() {
        let s = session(100);
        let p = Policy {
            refresh_skew: 60,
            max_age: None,
        };
        let r = || Credential::Session {
            session: &s,
            refreshable: true,
        };
        let n = || Credential::Session {
            session: &s,
            refreshable: false,
        };
        assert_eq!(decide(false, r(), &p, 39), Decision::Allow);
        assert_eq!(
            decide(false, r(), &p, 40),
            Decision::Refresh,
            "inside the skew"
        );
        assert_eq!(
            decide(false, r(), &p, 500),
            Decision::Refresh,
            "long expired"
        );
        assert_eq!(
            decide(false, n(), &p, 40),
            Decision::Allow,
            "no refresh token: use what is left"
        );
        assert_eq!(decide(false, n(), &p, 100), NO_TOKEN);
    }

    #[test]
    fn short_lived_tokens_refresh_halfway_not_on_every_request() {
        let mut s = session(130);
        s.issued_at = 100;
        let p = Policy {
            refresh_skew: 60,
            max_age: None,
        };
        let r = || Credential::Session {
            session: &s,
            refreshable: true,
        };
        assert_eq!(p.refresh_at(&s), 115, "30 s tokens: halfway");
        assert_eq!(decide(false, r(), &p, 101), Decision::Allow);
        assert_eq!(decide(false, r(), &p, 114), Decision::Allow);
        assert_eq!(decide(false, r(), &p, 115), Decision::Refresh);
        s.issued_at = 0;
        assert_eq!(p.refresh_at(&s), 70, "issue time unknown: the skew");
    }

    #[test]
    fn no_session_outlives_its_cookie_lifetime() {
        let s = session(u64::MAX / 2);
        let p = Policy::default();
        let r = || Credential::Session {
            session: &s,
            refreshable: true,
        };
        assert_eq!(
            decide(true, r(), &p, MAX_COOKIE_AGE_SECS - 1),
            Decision::Allow
        );
        assert_eq!(decide(true, r(), &p, MAX_COOKIE_AGE_SECS), Decision::SignIn);
    }

    #[test]
    fn max_age_ends_any_session() {
        let mut s = session(10_000);
        s.created_at = 1_000;
        let p = Policy {
            refresh_skew: 60,
            max_age: Some(3_600),
        };
        let r = || Credential::Session {
            session: &s,
            refreshable: true,
        };
        assert_eq!(decide(true, r(), &p, 4_599), Decision::Allow);
        assert_eq!(decide(true, r(), &p, 4_600), Decision::SignIn);
        assert_eq!(decide(false, r(), &p, 4_600), NO_TOKEN);
    }

    #[test]
    fn navigation_gets_sign_in_and_apis_get_401() {
        let p = Policy::default();
        assert_eq!(decide(true, Credential::None, &p, 0), Decision::SignIn);
        assert_eq!(decide(false, Credential::None, &p, 0), NO_TOKEN);
        assert_eq!(decide(true, Credential::InvalidBearer, &p, 0), BAD_TOKEN);
        assert_eq!(
            decide(false, Credential::Bearer { expires_at: 10 }, &p, 5),
            Decision::Allow
        );
        assert_eq!(
            decide(false, Credential::Bearer { expires_at: 10 }, &p, 100),
            BAD_TOKEN
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
