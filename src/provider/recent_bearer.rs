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

use std::sync::Arc;

use crate::identity::Identity;
use crate::session::recent::Memo;

/// What checking the remembered token found.
#[derive(Clone)]
struct Answer {
    identity: Arc<Identity>,
    expires_at: u64,
    until: u64,
    /// The key epoch read before the token was checked.
    epoch: u64,
}

#[derive(Default, Debug)]
pub struct RecentBearer(Memo<Answer>);

impl RecentBearer {
    /// The identity and expiry `token` verified to, if it is the token
    /// remembered and the answer still stands at `now` under the key epoch
    /// `epoch` (the current [`super::keys_epoch`]).
    pub fn get(&self, token: &[u8], now: u64, epoch: u64) -> Option<(Arc<Identity>, u64)> {
        self.0
            .get(token)
            .filter(|a| now < a.until && a.epoch == epoch)
            .map(|a| (a.identity, a.expires_at))
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
        let answer = Answer {
            identity: identity.clone(),
            expires_at,
            until,
            epoch,
        };
        self.0.put(token, &answer);
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
        assert!(r.get(b"a.b.c", 10, 7).is_none(), "nothing remembered");
        r.put(b"a.b.c", &alice(), 100, 160, 7);
        let (id, exp) = r.get(b"a.b.c", 10, 7).unwrap();
        assert_eq!((id.sub.as_str(), exp), ("alice", 100));
        for other in [&b"a.b.d"[..], b"a.b.", b"a.b.cc", b""] {
            assert!(r.get(other, 10, 7).is_none(), "{other:?}");
        }
        assert!(r.get(b"a.b.c", 159, 7).is_some());
        assert!(r.get(b"a.b.c", 160, 7).is_none(), "its answer has ended");
    }

    #[test]
    fn new_signing_keys_end_every_remembered_answer() {
        let r = RecentBearer::default();
        r.put(b"t", &alice(), 100, 160, 7);
        assert!(r.get(b"t", 10, 7).is_some());
        assert!(r.get(b"t", 10, 8).is_none(), "checked with the old keys");
        // The epoch only grows, so an answer checked before a change never
        // stands again.
        let before = super::super::keys_epoch();
        super::super::keys_changed();
        assert!(super::super::keys_epoch() > before);
    }
}
