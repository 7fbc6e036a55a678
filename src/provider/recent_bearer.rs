//! The last bearer token a connection's requests carried, and what checking
//! it found.
//!
//! An IDE plugin or CLI sends the same token on every request of its
//! keep-alive connection. Each option keeps a cache of verified tokens, but
//! finding an entry there means hashing the whole token (SHA-256 of several
//! hundred bytes) and taking a shard's lock; the connection's memo costs one
//! constant-time comparison instead, and nothing shared. It answers only
//! for exactly the token it holds, only until the answer's `until` (the
//! token's expiry with the option's leeway, and the cache's age limit) and
//! only while the signing keys it was checked with are still the current
//! ones ([`super::keys_epoch`]); anything else is checked as usual and
//! replaces it. Refusals are never remembered.

use std::sync::{Arc, Mutex};

use crate::identity::Identity;
use crate::session::recent::same;

struct Remembered {
    token: Box<[u8]>,
    identity: Arc<Identity>,
    expires_at: u64,
    until: u64,
    /// The key epoch read before the token was checked.
    epoch: u64,
}

#[derive(Default)]
pub struct RecentBearer {
    last: Mutex<Option<Remembered>>,
}

impl std::fmt::Debug for RecentBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecentBearer(..)")
    }
}

impl RecentBearer {
    /// The identity and expiry `token` verified to, if it is the token
    /// remembered and the answer still stands at `now`.
    pub fn get(&self, token: &[u8], now: u64) -> Option<(Arc<Identity>, u64)> {
        let last = self.last.try_lock().ok()?;
        let r = last.as_ref()?;
        let stands = now < r.until && r.epoch == super::keys_epoch();
        // Constant time: through a proxy that pools connections, the token
        // remembered may be another client's.
        (same(&r.token, token) && stands).then(|| (r.identity.clone(), r.expires_at))
    }

    /// Remembers that `token` verified (with the keys of `epoch`, read
    /// before the check began).
    pub fn put(
        &self,
        token: &[u8],
        identity: &Arc<Identity>,
        expires_at: u64,
        until: u64,
        epoch: u64,
    ) {
        if let Ok(mut last) = self.last.try_lock() {
            *last = Some(Remembered {
                token: token.into(),
                identity: identity.clone(),
                expires_at,
                until,
                epoch,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Arc<Identity> {
        Arc::new(Identity {
            sub: "alice".into(),
            ..Default::default()
        })
    }

    #[test]
    fn only_the_same_token_is_answered_and_only_until_its_answer_ends() {
        let r = RecentBearer::default();
        assert!(r.get(b"a.b.c", 10).is_none(), "nothing remembered");
        let epoch = super::super::keys_epoch();
        r.put(b"a.b.c", &alice(), 100, 160, epoch);
        let (id, exp) = r.get(b"a.b.c", 10).unwrap();
        assert_eq!((id.sub.as_str(), exp), ("alice", 100));
        for other in [&b"a.b.d"[..], b"a.b.", b"a.b.cc", b""] {
            assert!(r.get(other, 10).is_none(), "{other:?}");
        }
        assert!(r.get(b"a.b.c", 159).is_some());
        assert!(r.get(b"a.b.c", 160).is_none(), "its answer has ended");
    }

    #[test]
    fn new_signing_keys_end_every_remembered_answer() {
        let r = RecentBearer::default();
        r.put(b"t", &alice(), 100, 160, super::super::keys_epoch());
        assert!(r.get(b"t", 10).is_some());
        super::super::keys_changed();
        assert!(r.get(b"t", 10).is_none(), "checked with the old keys");
        // Checked while the keys changed: remembered with the epoch read before.
        let before = super::super::keys_epoch();
        super::super::keys_changed();
        r.put(b"t", &alice(), 100, 160, before);
        assert!(r.get(b"t", 10).is_none());
    }
}
