//! In-flight sign-ins: one short-lived sealed cookie per sign-in, named after
//! its `state`, so any replica can finish it and several tabs can sign in at
//! once. Single use, ten minutes, at most [`MAX_PER_BROWSER`] per browser
//! (the oldest dropped first). Scoped to `/sso/` so they never ride along
//! with proxied requests.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::Sealer;
use super::cookies::{CookieNames, request_cookies};

/// How long a sign-in may take, in seconds.
pub const TTL_SECS: u64 = 600;
/// Sign-ins one browser may have under way at once, by default
/// (`CT_MAX_LOGIN_STATES`).
pub const MAX_PER_BROWSER: usize = 4;
/// `/`, as the `__Host-` prefix requires; the cookies are stripped before
/// forwarding like every cookie of the gate.
const PATH: &str = "/";
/// Characters of the state that name its cookie.
const NAME_CHARS: usize = 16;

/// What the gate remembers between `/sso/login` and the callback.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginState {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub pkce_verifier: String,
    /// Where to land afterwards: a validated relative path.
    #[serde(rename = "r")]
    pub return_to: String,
    /// The login option that started the sign-in.
    #[serde(rename = "o")]
    pub option: String,
    #[serde(rename = "c")]
    pub created_at: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginStateError {
    #[error(
        "no sign-in is under way for this state in this browser (it may have finished already)"
    )]
    Unknown,
    #[error("the sign-in took longer than ten minutes")]
    Expired,
    #[error("the sign-in state could not be stored")]
    Store,
}

#[derive(Clone, Debug)]
pub struct LoginStates {
    sealer: Arc<Sealer>,
    names: CookieNames,
    max_per_browser: usize,
}

impl LoginStates {
    pub fn new(sealer: Arc<Sealer>, names: CookieNames) -> Self {
        Self {
            sealer,
            names,
            max_per_browser: MAX_PER_BROWSER,
        }
    }

    /// At most `n` sign-ins under way per browser (at least one).
    pub fn with_max_per_browser(mut self, n: usize) -> Self {
        self.max_per_browser = n.max(1);
        self
    }

    fn cookie_name(&self, state: &str) -> Option<String> {
        let id = state.get(..NAME_CHARS)?;
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .then(|| format!("{}{id}", self.names.login_prefix()))
    }

    fn open(&self, name: &str, value: &str) -> Option<LoginState> {
        serde_json::from_slice(&self.sealer.open(name, value)?).ok()
    }

    /// Remembers `st` in a new cookie and drops expired, unreadable and
    /// surplus older sign-ins of this browser.
    pub fn issue(
        &self,
        st: &LoginState,
        request: &HeaderMap,
        now: u64,
        out: &mut Vec<HeaderValue>,
    ) -> Result<(), LoginStateError> {
        let name = self.cookie_name(&st.state).ok_or(LoginStateError::Store)?;
        let plain = serde_json::to_vec(st).map_err(|_| LoginStateError::Store)?;
        let sealed = self
            .sealer
            .seal(&name, &plain)
            .map_err(|_| LoginStateError::Store)?;
        let mut live: Vec<(u64, &str)> = Vec::new();
        for (n, v) in
            request_cookies(request).filter(|(n, _)| n.starts_with(self.names.login_prefix()))
        {
            match self.open(n, v) {
                Some(old)
                    if old.created_at + TTL_SECS > now && live.len() < 4 * self.max_per_browser =>
                {
                    live.push((old.created_at, n))
                }
                _ => out.extend(self.names.remove(n, PATH)),
            }
        }
        live.sort_unstable();
        let surplus = (live.len() + 1).saturating_sub(self.max_per_browser);
        for (_, n) in live.iter().take(surplus) {
            out.extend(self.names.remove(n, PATH));
        }
        let ttl = i64::try_from(TTL_SECS).unwrap_or(600);
        out.push(
            self.names
                .set(&name, &sealed, PATH, ttl)
                .ok_or(LoginStateError::Store)?,
        );
        Ok(())
    }

    /// Takes the sign-in named by `state`: the cookie is deleted whatever the
    /// outcome, so it can be used once.
    pub fn take(
        &self,
        state: &str,
        request: &HeaderMap,
        now: u64,
        out: &mut Vec<HeaderValue>,
    ) -> Result<LoginState, LoginStateError> {
        let name = self.cookie_name(state).ok_or(LoginStateError::Unknown)?;
        let value = request_cookies(request)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or(LoginStateError::Unknown)?;
        out.extend(self.names.remove(&name, PATH));
        let st = self.open(&name, value).ok_or(LoginStateError::Unknown)?;
        if st.state != state {
            return Err(LoginStateError::Unknown);
        }
        if st.created_at + TTL_SECS <= now || st.created_at > now + 60 {
            return Err(LoginStateError::Expired);
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;
    use crate::config::Secret;

    fn states() -> LoginStates {
        LoginStates::new(
            Arc::new(Sealer::new(&[Secret::new(vec![7; 32])]).unwrap()),
            CookieNames::new(true),
        )
    }

    fn st(state: &str, at: u64) -> LoginState {
        LoginState {
            state: state.into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            return_to: "/x".into(),
            option: "oidc".into(),
            created_at: at,
        }
    }

    fn jar(cookies: &[HeaderValue]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let live: Vec<String> = cookies
            .iter()
            .filter(|c| !c.to_str().unwrap().contains("Max-Age=0"))
            .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&live.join("; ")).unwrap(),
        );
        h
    }

    const A: &str = "AAAAAAAAAAAAAAAAaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "BBBBBBBBBBBBBBBBbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn two_tabs_each_finish_and_each_once() {
        let s = states();
        let (mut c1, mut c2) = (Vec::new(), Vec::new());
        s.issue(&st(A, 100), &HeaderMap::new(), 100, &mut c1)
            .unwrap();
        s.issue(&st(B, 101), &jar(&c1), 101, &mut c2).unwrap();
        let both = jar(&[c1, c2].concat());
        let mut out = Vec::new();
        assert_eq!(s.take(B, &both, 102, &mut out).unwrap().state, B);
        assert_eq!(s.take(A, &both, 102, &mut out).unwrap().state, A);
        assert!(
            out.iter()
                .all(|c| c.to_str().unwrap().contains("Max-Age=0")),
            "taking deletes the cookie"
        );
    }

    #[test]
    fn wrong_expired_and_unknown_states_fail() {
        let s = states();
        let mut c = Vec::new();
        s.issue(&st(A, 100), &HeaderMap::new(), 100, &mut c)
            .unwrap();
        let j = jar(&c);
        let mut out = Vec::new();
        assert_eq!(
            s.take(B, &j, 101, &mut out).unwrap_err(),
            LoginStateError::Unknown
        );
        let forged = format!("{}X", &A[..A.len() - 1]);
        assert_eq!(
            s.take(&forged, &j, 101, &mut out).unwrap_err(),
            LoginStateError::Unknown
        );
        assert_eq!(
            s.take(A, &j, 100 + TTL_SECS, &mut out).unwrap_err(),
            LoginStateError::Expired
        );
        assert_eq!(
            s.take("", &j, 101, &mut out).unwrap_err(),
            LoginStateError::Unknown
        );
    }

    #[test]
    fn at_most_four_per_browser_oldest_dropped() {
        let s = states();
        let mut all: Vec<HeaderValue> = Vec::new();
        let ids: Vec<String> = (0..6).map(|i| format!("{i}{}", "x".repeat(42))).collect();
        for (i, id) in ids.iter().enumerate() {
            let mut out = Vec::new();
            s.issue(
                &st(id, 100 + i as u64),
                &jar(&all),
                100 + i as u64,
                &mut out,
            )
            .unwrap();
            for c in out {
                let name = c.to_str().unwrap().split('=').next().unwrap().to_string();
                all.retain(|o| o.to_str().unwrap().split('=').next().unwrap() != name);
                all.push(c);
            }
        }
        let live = jar(&all);
        let mut out = Vec::new();
        assert!(
            s.take(&ids[0], &live, 110, &mut out).is_err(),
            "oldest dropped"
        );
        assert!(
            s.take(&ids[1], &live, 110, &mut out).is_err(),
            "second oldest dropped"
        );
        for id in &ids[2..] {
            assert!(s.take(id, &live, 110, &mut out).is_ok(), "newest kept");
        }
    }
}
