//! One refresh per session at a time.
//!
//! Concurrent requests of one session that all need a refresh share a single
//! call to the token endpoint: the first starts it (on its own task, so a
//! client that disconnects cannot cancel a refresh the provider has already
//! performed), the others wait for it and use its result. The result stays
//! for [`KEEP`] after it started (an unreachable provider is not remembered:
//! the next request asks again), so a request that arrives a little later
//! with the old cookie gets the same new session instead of replaying a
//! refresh token the provider has rotated (which reuse detection punishes by
//! ending the session). Entries are keyed by session id and token expiry, so
//! each generation of a session refreshes once.
//!
//! The map is per process and bounded ([`DEFAULT_MAX_ENTRIES`]); when full, a
//! refresh is refused as unavailable (the gate answers 503 with Retry-After)
//! rather than risking a duplicate. Across several replicas two may refresh
//! the same session at once; with rotation and reuse detection the provider
//! then ends it. A shared store (Redis, a later issue) closes that gap; until
//! then, route a user's requests to one replica (session affinity) or keep
//! rotation's grace period on (Okta's default 30 s covers it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::Session;

/// How long a finished refresh is remembered for late requests.
pub const KEEP: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// What a refresh came to.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// New tokens: the session to continue with.
    Refreshed(Box<Session>),
    /// The provider refused (`invalid_grant`): the session is over.
    Ended,
    /// The provider could not be asked; the session stays as it was.
    Unavailable,
}

type Slot = (Arc<OnceCell<Outcome>>, Instant);

pub struct SingleFlight {
    slots: Mutex<HashMap<(String, u64), Slot>>,
    max_entries: usize,
}

impl Default for SingleFlight {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl SingleFlight {
    pub fn new(max_entries: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    /// Runs `refresh` for this generation of `session` unless a run is under
    /// way or recently finished, and returns that run's outcome.
    pub async fn run<Fut>(&self, session: &Session, refresh: impl FnOnce() -> Fut) -> Outcome
    where
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let cell = {
            let Ok(mut slots) = self.slots.lock() else {
                return Outcome::Unavailable;
            };
            slots.retain(|_, (_, started)| started.elapsed() < KEEP);
            let key = (session.id.clone(), session.expires_at);
            // A generation refreshed within the second it was issued has the
            // key of its predecessor: the remembered result is then this very
            // generation, not a newer one. Refresh it for real (its refresh
            // token is the current one, so this replays nothing).
            if slots.get(&key).is_some_and(|(cell, _)| {
                matches!(cell.get(), Some(Outcome::Refreshed(new))
                    if new.expires_at <= session.expires_at && new.refresh_token == session.refresh_token)
            }) {
                slots.remove(&key);
            }
            if !slots.contains_key(&key) && slots.len() >= self.max_entries {
                tracing::warn!(
                    max = self.max_entries,
                    "too many refreshes under way; refusing this one"
                );
                return Outcome::Unavailable;
            }
            slots
                .entry(key)
                .or_insert_with(|| (Arc::new(OnceCell::new()), Instant::now()))
                .0
                .clone()
        };
        let outcome = cell
            .get_or_init(|| async move {
                tokio::spawn(refresh())
                    .await
                    .unwrap_or(Outcome::Unavailable)
            })
            .await
            .clone();
        if matches!(outcome, Outcome::Unavailable) {
            // Not remembered: the next request tries the provider again.
            if let Ok(mut slots) = self.slots.lock() {
                let key = (session.id.clone(), session.expires_at);
                if slots.get(&key).is_some_and(|(c, _)| Arc::ptr_eq(c, &cell)) {
                    slots.remove(&key);
                }
            }
        }
        outcome
    }

    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::identity::Identity;

    fn s(id: &str, expires_at: u64) -> Session {
        Session {
            id: id.into(),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_concurrent_callers_cause_one_refresh() {
        let flight = Arc::new(SingleFlight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flight, calls) = (flight.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(&s("one", 10), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Outcome::Refreshed(Box::new(s("one", 20)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Outcome::Refreshed(n) if n.expires_at == 20));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A late request with the old cookie reuses the result.
        let late = flight.run(&s("one", 10), || async { Outcome::Ended }).await;
        assert!(matches!(late, Outcome::Refreshed(_)));
        // The next generation refreshes again.
        let next = flight.run(&s("one", 20), || async { Outcome::Ended }).await;
        assert!(matches!(next, Outcome::Ended));
    }

    #[tokio::test]
    async fn a_remembered_result_of_the_same_generation_is_refreshed_again() {
        fn with_token(expires_at: u64, token: &str) -> Session {
            Session {
                refresh_token: Some(crate::config::Secret::new(token.into())),
                ..s("one", expires_at)
            }
        }
        let flight = SingleFlight::default();
        // Refreshed within the second it was issued: same expiry, token not rotated.
        let gen2 = with_token(10, "r");
        let same = gen2.clone();
        flight
            .run(&with_token(10, "r"), || async move {
                Outcome::Refreshed(Box::new(same))
            })
            .await;
        let next = flight
            .run(&gen2, || async {
                Outcome::Refreshed(Box::new(with_token(11, "r")))
            })
            .await;
        assert!(matches!(next, Outcome::Refreshed(n) if n.expires_at == 11));

        // Rotated: the predecessor's token is spent, so its late requests get
        // the remembered result, never a replay.
        let flight = SingleFlight::default();
        let rotated = with_token(10, "r2");
        let first = rotated.clone();
        flight
            .run(&with_token(10, "r1"), || async move {
                Outcome::Refreshed(Box::new(first))
            })
            .await;
        let late = flight
            .run(&with_token(10, "r1"), || async { Outcome::Ended })
            .await;
        assert!(matches!(late, Outcome::Refreshed(n) if n.refresh_token == rotated.refresh_token));
    }

    #[tokio::test]
    async fn full_map_refuses_instead_of_duplicating() {
        let flight = SingleFlight::new(1);
        flight.run(&s("a", 1), || async { Outcome::Ended }).await;
        let refused = flight.run(&s("b", 1), || async { Outcome::Ended }).await;
        assert!(matches!(refused, Outcome::Unavailable));
        assert_eq!(flight.len(), 1);
    }
}
