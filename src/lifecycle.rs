//! The session lifecycle around the pure gate decision: refreshing (one call
//! to the provider per session at a time), ending sessions (revocation plus
//! their live connections), and the guard that keeps a WebSocket or stream
//! alive exactly as long as its session — refreshing it in the background
//! when nothing else does.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Secret;
use http::{HeaderMap, HeaderValue};

use crate::gate::{self, Credential, Decision, Policy};
use crate::live::{Lease, Wake};
use crate::provider::RefreshError;
use crate::proxy::cutoff::Guard;
use crate::router::State;
use crate::session::refresh::Outcome;
use crate::session::{Revocation, Session};
use crate::telemetry::metrics::Ended;

/// While the provider is unreachable, how often a live connection's session is retried.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// The shortest pause between two refreshes of a live connection's session.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// When the holder of a live connection must act: refresh a refreshable
/// session when a request would ([`Policy::refresh_at`]), otherwise let it
/// run out; never past the absolute end.
pub fn act_at(session: &Session, refreshable: bool, policy: &Policy) -> u64 {
    let due = if refreshable {
        policy.refresh_at(session)
    } else {
        session.expires_at
    };
    due.min(policy.hard_end(session))
}

/// Whether the session's option refreshes and the session can be refreshed.
pub fn refreshable(state: &State, session: &Session) -> bool {
    session.refresh_token.is_some()
        && state
            .registry
            .get(&session.option)
            .is_some_and(|o| o.can_refresh())
}

/// Where a session a request carries stands, after refreshing it if due.
pub enum Checked {
    /// Use this session; `cookies` carry it back when it was refreshed.
    Valid {
        session: Arc<Session>,
        cookies: Vec<HeaderValue>,
    },
    /// The provider refused the refresh; `cookies` delete the session.
    Ended { cookies: Vec<HeaderValue> },
    /// Expired (or past its maximum age) with no way to refresh it.
    Expired,
    /// Due for a refresh the provider could not perform, and past any grace.
    Unavailable,
}

/// The gate's decision on a loaded session, before any refresh.
pub fn decide(state: &State, session: &Session, now: u64) -> Decision {
    let credential = Credential::Session {
        session,
        refreshable: refreshable(state, session),
    };
    gate::decide(false, credential, &state.policy, now)
}

/// Decides on a loaded session and refreshes it when due.
pub async fn check(state: &State, session: Arc<Session>, request: &HeaderMap, now: u64) -> Checked {
    match decide(state, &session, now) {
        Decision::Allow => Checked::Valid {
            session,
            cookies: Vec::new(),
        },
        Decision::Refresh => match refresh(state, &session).await {
            Outcome::Refreshed(new) => {
                let mut cookies = Vec::new();
                if let Err(e) = state.store.save(&new, request, now, &mut cookies) {
                    tracing::error!(error = %e, "cannot store the refreshed session");
                }
                Checked::Valid {
                    session: Arc::from(new),
                    cookies,
                }
            }
            Outcome::Ended => {
                let mut cookies = Vec::new();
                state.store.clear(request, &mut cookies);
                Checked::Ended { cookies }
            }
            Outcome::Unavailable if now < session.expires_at.saturating_add(state.grace) => {
                Checked::Valid {
                    session,
                    cookies: Vec::new(),
                }
            }
            Outcome::Unavailable => Checked::Unavailable,
        },
        Decision::SignIn | Decision::Unauthorized { .. } => Checked::Expired,
    }
}

/// Refreshes `session` once for all concurrent callers; a newer generation
/// already known (a live connection refreshed it) is used as it is.
pub async fn refresh(state: &State, session: &Session) -> Outcome {
    let mut outcome = refresh_once(state, session).await;
    // A remembered result (a request with an old cookie) may itself have
    // expired since: refresh that generation in turn rather than use it.
    for _ in 0..MAX_STALE_HOPS {
        match &outcome {
            Outcome::Refreshed(new) if new.expires_at <= crate::clock::now() => {
                let new = new.clone();
                outcome = refresh_once(state, &new).await;
            }
            _ => break,
        }
    }
    outcome
}

/// How many remembered generations one request may step over.
const MAX_STALE_HOPS: usize = 3;

async fn refresh_once(state: &State, session: &Session) -> Outcome {
    if let Some(latest) = state
        .live
        .latest(&session.id)
        .filter(|l| l.expires_at > session.expires_at)
    {
        return Outcome::Refreshed(Box::new(latest));
    }
    let Some(option) = state.registry.get(&session.option).cloned() else {
        return Outcome::Ended;
    };
    let old = session.clone();
    let metrics = state.metrics.clone();
    let outcome = state
        .refreshes
        .run(session, move || async move {
            match option.refresh(&old).await {
                Ok(new) => {
                    metrics.refreshes.increment(1);
                    Outcome::Refreshed(Box::new(Session {
                        issued_at: crate::clock::now(),
                        expires_at: new.expires_at,
                        refresh_token: new
                            .refresh_token
                            .map(Secret::new)
                            .or(old.refresh_token.clone()),
                        id_token: new.id_token.map(Secret::new).or(old.id_token.clone()),
                        ..old
                    }))
                }
                Err(RefreshError::Rejected | RefreshError::Unsupported) => {
                    tracing::info!(sub = %old.identity.sub, option = %old.option, "refresh refused: session ended");
                    metrics.refresh_rejected.increment(1);
                    metrics.session_ended(Ended::RefreshRefused);
                    Outcome::Ended
                }
                Err(RefreshError::Unavailable(reason)) => {
                    tracing::warn!(sub = %old.identity.sub, %reason, "refresh failed: provider unavailable");
                    metrics.refresh_unavailable.increment(1);
                    Outcome::Unavailable
                }
            }
        })
        .await;
    match &outcome {
        Outcome::Refreshed(new) => {
            tracing::debug!(sub = %new.identity.sub, expires_at = new.expires_at, "session refreshed");
            state.live.extend(new, act_at(new, true, &state.policy));
        }
        Outcome::Ended => {
            let id = session.id.clone();
            state.live.end(|s| s.id == id);
        }
        Outcome::Unavailable => {}
    }
    outcome
}

/// Ends sessions before their cookies expire: they are refused from now on
/// and their live connections close.
pub fn end(state: &State, what: Revocation, until: u64, now: u64) -> usize {
    state.store.revoke(what.clone(), until, now);
    state.live.end(|s| match &what {
        Revocation::Session { id } => s.id == *id,
        Revocation::ProviderSession { sid } => s.sid.as_deref() == Some(sid.as_str()),
        Revocation::Subject { sub, before } => s.identity.sub == *sub && s.created_at <= *before,
    })
}

/// A guard for a live connection of `session`: resolves when the session
/// ends, reaches its maximum age, fails to refresh, or expires unrefreshed.
pub fn guard(state: &Arc<State>, session: &Session) -> Guard {
    let can_refresh = refreshable(state, session);
    let lease = state
        .live
        .lease(session, act_at(session, can_refresh, &state.policy));
    // Ended while its request waited for the upstream: `end` revokes before
    // it wakes leases, so a lease taken after that wake-up sees the
    // revocation here, and one taken before it is woken.
    if state.store.is_revoked(session) {
        return Box::pin(std::future::ready(()));
    }
    Box::pin(keep(state.clone(), lease, session.clone(), can_refresh))
}

/// A guard for a bearer-authenticated connection: the token's expiry.
pub fn bearer_guard(expires_at: u64) -> Guard {
    Box::pin(async move {
        let left = expires_at.saturating_sub(crate::clock::now());
        tokio::time::sleep(Duration::from_secs(left)).await;
    })
}

async fn keep(state: Arc<State>, mut lease: Lease, mut session: Session, can_refresh: bool) {
    loop {
        if lease.wake().await == Wake::Ended {
            return;
        }
        let now = crate::clock::now();
        let past_max_age = state.policy.hard_end(&session) <= now;
        if !can_refresh || past_max_age {
            tracing::info!(sub = %session.identity.sub, "live connection closed: its session expired");
            state.metrics.session_ended(if past_max_age {
                Ended::MaxAge
            } else {
                Ended::Expired
            });
            return;
        }
        match refresh(&state, &session).await {
            Outcome::Refreshed(new) => {
                session = *new;
                // Never loop hot: a result that leaves the session due at
                // once (a remembered or already expired one) waits a moment.
                if act_at(&session, true, &state.policy) <= crate::clock::now() {
                    tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
                }
            }
            Outcome::Ended => return,
            Outcome::Unavailable => {
                let grace_end = session.expires_at.saturating_add(state.grace);
                if now >= grace_end {
                    tracing::info!(sub = %session.identity.sub, "live connection closed: its session could not be refreshed");
                    return;
                }
                tokio::time::sleep(RETRY_EVERY.min(Duration::from_secs(grace_end - now))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn session(expires_at: u64) -> Session {
        Session {
            id: "i".into(),
            option: "oidc".into(),
            identity: Identity::default(),
            sid: None,
            created_at: 0,
            issued_at: 0,
            expires_at,
            refresh_token: None,
            id_token: None,
        }
    }

    #[test]
    fn live_connections_act_before_expiry_and_never_continuously() {
        let p = Policy {
            refresh_skew: 60,
            max_age: Some(10_000),
        };
        assert_eq!(act_at(&session(1_000), true, &p), 940, "the skew");
        assert_eq!(
            act_at(&session(1_000), false, &p),
            1_000,
            "no refresh: expiry"
        );
        // Tokens that live 4 s, shorter than the skew: halfway, not at once.
        let short = Session {
            issued_at: 100,
            ..session(104)
        };
        assert_eq!(act_at(&short, true, &p), 102);
        assert_eq!(act_at(&session(20_000), true, &p), 10_000, "maximum age");
    }
}
