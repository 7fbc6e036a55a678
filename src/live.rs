//! Live connections follow their session.
//!
//! Every forwarded WebSocket and long streamed response takes a [`Lease`] on
//! its session. When the session ends — sign-out, back-channel logout, a
//! failed refresh — [`Live::end`] wakes every lease of it at once; when it
//! reaches its expiry the lease wakes by itself, and the owner may try to
//! extend it (a refresh) before giving up. Sessions without live connections
//! cost nothing here; the request hot path never touches this registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::session::Session;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Valid { until: u64 },
    Ended,
}

struct Entry {
    tx: watch::Sender<Status>,
    /// The newest generation of the session seen (after refreshes).
    latest: Session,
}

impl Entry {
    /// Moves a still-valid session's expiry forward (never back, never revives an ended one).
    fn bump(&mut self, session: &Session, until: u64) {
        // Copy the status out: holding the borrow while sending would deadlock.
        let current = *self.tx.borrow();
        if matches!(current, Status::Valid { until: known } if until > known) {
            self.tx.send_replace(Status::Valid { until });
            self.latest = session.clone();
        }
    }
}

/// Why a lease woke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The session was ended; close now.
    Ended,
    /// The session reached its expiry; refresh it or close.
    Expired,
}

#[derive(Default)]
pub struct Live {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Live {
    /// Ties a connection to `session` until the lease is dropped.
    pub fn lease(self: &Arc<Self>, session: &Session, until: u64) -> Lease {
        let rx = match self.entries.lock() {
            Ok(mut entries) => {
                let entry = entries.entry(session.id.clone()).or_insert_with(|| Entry {
                    tx: watch::channel(Status::Valid { until }).0,
                    latest: session.clone(),
                });
                entry.bump(session, until);
                entry.tx.subscribe()
            }
            // A poisoned registry cannot track: the connection ends at once.
            Err(_) => watch::channel(Status::Ended).1,
        };
        Lease {
            rx,
            id: session.id.clone(),
            live: self.clone(),
        }
    }

    /// Records a newer generation of a session (after a refresh): its leases
    /// now run until `until`.
    pub fn extend(&self, session: &Session, until: u64) {
        if let Some(entry) = self
            .entries
            .lock()
            .ok()
            .as_mut()
            .and_then(|e| e.get_mut(&session.id))
        {
            entry.bump(session, until);
        }
    }

    /// The newest generation known for a session id, if it has live connections.
    pub fn latest(&self, id: &str) -> Option<Session> {
        self.entries.lock().ok()?.get(id).map(|e| e.latest.clone())
    }

    /// Ends every live connection of the sessions `which` selects; returns how many sessions.
    pub fn end(&self, which: impl Fn(&Session) -> bool) -> usize {
        let Ok(entries) = self.entries.lock() else {
            return 0;
        };
        let mut n = 0;
        for e in entries.values() {
            if which(&e.latest) {
                e.tx.send_replace(Status::Ended);
                n += 1;
            }
        }
        n
    }

    /// Sessions with at least one live connection.
    pub fn sessions(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    fn release(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            // Our receiver is dropped just after this; one left means it was the last.
            if entries.get(id).is_some_and(|e| e.tx.receiver_count() <= 1) {
                entries.remove(id);
            }
        }
    }
}

/// One live connection's hold on its session.
pub struct Lease {
    rx: watch::Receiver<Status>,
    id: String,
    live: Arc<Live>,
}

impl Lease {
    pub fn session_id(&self) -> &str {
        &self.id
    }

    /// Waits until the session ends or reaches its expiry.
    pub async fn wake(&mut self) -> Wake {
        loop {
            let status = *self.rx.borrow_and_update();
            let until = match status {
                Status::Ended => return Wake::Ended,
                Status::Valid { until } => until,
            };
            let now = crate::clock::now();
            if until <= now {
                return Wake::Expired;
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return Wake::Ended },
                () = tokio::time::sleep(Duration::from_secs(until - now)) => {}
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.live.release(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn s(id: &str, sub: &str, sid: Option<&str>) -> Session {
        Session {
            id: id.into(),
            option: "oidc".into(),
            identity: Identity {
                sub: sub.into(),
                ..Default::default()
            },
            sid: sid.map(Into::into),
            created_at: 0,
            issued_at: 0,
            expires_at: 0,
            refresh_token: None,
            id_token: None,
        }
    }

    #[tokio::test]
    async fn ending_wakes_only_the_named_sessions() {
        let live = Arc::new(Live::default());
        let far = crate::clock::now() + 3600;
        let mut a = live.lease(&s("a", "alice", Some("p1")), far);
        let mut a2 = live.lease(&s("a", "alice", Some("p1")), far);
        let mut b = live.lease(&s("b", "bob", None), far);
        assert_eq!(live.sessions(), 2);
        assert_eq!(live.end(|s| s.sid.as_deref() == Some("p1")), 1);
        assert_eq!(a.wake().await, Wake::Ended);
        assert_eq!(a2.wake().await, Wake::Ended);
        let still = tokio::time::timeout(Duration::from_millis(50), b.wake()).await;
        assert!(still.is_err(), "bob's connection is untouched");
        drop((a, a2));
        assert_eq!(live.sessions(), 1, "released with its last lease");
    }

    #[tokio::test]
    async fn expiry_wakes_and_extend_postpones_it() {
        let live = Arc::new(Live::default());
        let now = crate::clock::now();
        let mut lease = live.lease(&s("a", "alice", None), now);
        assert_eq!(lease.wake().await, Wake::Expired);
        let mut refreshed = s("a", "alice", None);
        refreshed.expires_at = now + 3600;
        live.extend(&refreshed, now + 3600);
        assert_eq!(live.latest("a").map(|x| x.expires_at), Some(now + 3600));
        let waiting = tokio::time::timeout(Duration::from_millis(50), lease.wake()).await;
        assert!(waiting.is_err(), "extended: no longer expired");
    }
}
