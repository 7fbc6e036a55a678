//! Sessions ended before their cookies expire: one session (sign-out), every
//! session of a provider session (`sid`, back-channel logout), or every
//! session of a user signed in before a moment (`sub`, back-channel logout
//! without `sid`).
//!
//! Checked on every request, so reads are lock-free: the table is immutable
//! and replaced whole on each (rare) change. Entries live until the cookies
//! they refuse would have expired anyway, then they are pruned. The list is
//! bounded ([`DEFAULT_MAX_ENTRIES`]); when full, the entries closest to
//! expiry are dropped first and a warning is logged.
//!
//! This list is per process. With several replicas each keeps its own; a
//! shared store (Redis, a later issue) publishes revocations to all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::Session;

/// Revocations kept at most, across all three kinds.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Default)]
struct Table {
    /// Session id → until.
    ids: HashMap<String, u64>,
    /// Provider session id → until.
    sids: HashMap<String, u64>,
    /// Subject → (sessions created at or before this time are revoked, until).
    subs: HashMap<String, (u64, u64)>,
}

impl Table {
    fn len(&self) -> usize {
        self.ids.len() + self.sids.len() + self.subs.len()
    }

    fn prune(&mut self, now: u64) {
        self.ids.retain(|_, until| *until > now);
        self.sids.retain(|_, until| *until > now);
        self.subs.retain(|_, (_, until)| *until > now);
    }

    /// Drops the entries closest to expiry until `max` remain.
    fn shrink_to(&mut self, max: usize) {
        let excess = self.len().saturating_sub(max);
        if excess == 0 {
            return;
        }
        let mut all: Vec<u64> = self
            .ids
            .values()
            .chain(self.sids.values())
            .copied()
            .chain(self.subs.values().map(|(_, u)| *u))
            .collect();
        all.sort_unstable();
        let cutoff = all.get(excess - 1).copied().unwrap_or(0);
        self.ids.retain(|_, u| *u > cutoff);
        self.sids.retain(|_, u| *u > cutoff);
        self.subs.retain(|_, (_, u)| *u > cutoff);
        tracing::warn!(
            max,
            "revocation list full: dropped the entries closest to expiry"
        );
    }
}

/// What to revoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    Session { id: String },
    ProviderSession { sid: String },
    Subject { sub: String, before: u64 },
}

pub struct Revocations {
    table: ArcSwap<Table>,
    writer: Mutex<()>,
    max_entries: usize,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revocations({} entries)", self.len())
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl Revocations {
    pub fn new(max_entries: usize) -> Self {
        Self {
            table: ArcSwap::from_pointee(Table::default()),
            writer: Mutex::new(()),
            max_entries: max_entries.max(1),
        }
    }

    /// Whether `session` has been ended.
    pub fn is_revoked(&self, session: &Session) -> bool {
        let t = self.table.load();
        if t.len() == 0 {
            return false;
        }
        t.ids.contains_key(&session.id)
            || session
                .sid
                .as_ref()
                .is_some_and(|sid| t.sids.contains_key(sid))
            || t.subs
                .get(&session.identity.sub)
                .is_some_and(|(before, _)| session.created_at <= *before)
    }

    /// Records a revocation that must hold until `until` (unix seconds).
    pub fn revoke(&self, what: Revocation, until: u64, now: u64) {
        let Ok(_guard) = self.writer.lock() else {
            return;
        };
        let mut next: Table = Table::clone(&self.table.load());
        next.prune(now);
        match what {
            Revocation::Session { id } => {
                next.ids.insert(id, until);
            }
            Revocation::ProviderSession { sid } => {
                next.sids.insert(sid, until);
            }
            Revocation::Subject { sub, before } => {
                let entry = next.subs.entry(sub).or_insert((before, until));
                *entry = (entry.0.max(before), entry.1.max(until));
            }
        }
        next.shrink_to(self.max_entries);
        self.table.store(Arc::new(next));
    }

    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn s(id: &str, sub: &str, sid: Option<&str>, created_at: u64) -> Session {
        Session {
            id: id.into(),
            option: "oidc".into(),
            identity: Identity {
                sub: sub.into(),
                ..Default::default()
            },
            sid: sid.map(Into::into),
            created_at,
            issued_at: 0,
            expires_at: created_at + 100,
            refresh_token: None,
            id_token: None,
        }
    }

    #[test]
    fn each_kind_revokes_what_it_names_and_nothing_else() {
        let r = Revocations::default();
        r.revoke(Revocation::Session { id: "a".into() }, 1000, 10);
        r.revoke(Revocation::ProviderSession { sid: "p".into() }, 1000, 10);
        r.revoke(
            Revocation::Subject {
                sub: "bob".into(),
                before: 50,
            },
            1000,
            10,
        );
        assert!(r.is_revoked(&s("a", "alice", None, 1)));
        assert!(!r.is_revoked(&s("b", "alice", None, 1)));
        assert!(r.is_revoked(&s("c", "alice", Some("p"), 1)));
        assert!(!r.is_revoked(&s("c", "alice", Some("q"), 1)));
        assert!(
            r.is_revoked(&s("d", "bob", None, 50)),
            "signed in before the logout"
        );
        assert!(
            !r.is_revoked(&s("e", "bob", None, 51)),
            "signed in again afterwards"
        );
    }

    #[test]
    fn expired_entries_are_pruned_and_the_list_is_bounded() {
        let r = Revocations::new(3);
        r.revoke(Revocation::Session { id: "old".into() }, 20, 10);
        r.revoke(Revocation::Session { id: "x".into() }, 100, 30);
        assert_eq!(r.len(), 1, "the entry past its time was pruned");
        for (i, until) in [200, 300, 400].iter().enumerate() {
            r.revoke(
                Revocation::Session {
                    id: format!("n{i}"),
                },
                *until,
                30,
            );
        }
        assert_eq!(r.len(), 3);
        assert!(
            !r.is_revoked(&s("x", "a", None, 0)),
            "closest to expiry dropped first"
        );
        assert!(r.is_revoked(&s("n2", "a", None, 0)));
    }
}
