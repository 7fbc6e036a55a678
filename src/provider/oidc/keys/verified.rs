//! Bearer tokens already verified, so an IDE or CLI that sends the same
//! token on every request pays for the signature check (RSA: about 250 µs
//! here) once, not on every request.
//!
//! Keyed by the SHA-256 of the whole token, so a token that differs in any
//! byte (another payload under a copied signature) is a miss and is
//! verified afresh. An entry answers only while the token is unexpired
//! (with the leeway) and for at most [`MAX_AGE_SECS`]; the cache belongs to
//! one key set, so a key reload starts it empty. Sharded, each shard a
//! short-held mutex and bounded (cleared when full), so memory stays flat
//! and two requests seldom meet on one lock. Refusals are never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::identity::Identity;

const SHARDS: usize = 16;
const PER_SHARD: usize = 256;
/// Longest an entry answers without a fresh signature check.
pub const MAX_AGE_SECS: u64 = 300;

type Key = [u8; 32];

struct Entry {
    identity: Arc<Identity>,
    expires_at: u64,
    /// When the entry stops answering (expiry plus leeway, or its age limit).
    until: u64,
}

pub struct Verified {
    shards: [Mutex<HashMap<Key, Entry>>; SHARDS],
    leeway: u64,
}

impl Verified {
    pub fn new(leeway: u64) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            leeway,
        }
    }

    pub fn key(token: &str) -> Key {
        Sha256::digest(token.as_bytes()).into()
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The identity, expiry and [`Self::until`] of a token verified before,
    /// if still good at `now`.
    pub fn get(&self, key: &Key, now: u64) -> Option<(Arc<Identity>, u64, u64)> {
        let shard = self.shard(key).lock().ok()?;
        let e = shard.get(key).filter(|e| now < e.until)?;
        Some((e.identity.clone(), e.expires_at, e.until))
    }

    /// Until when a token expiring at `expires_at`, verified at `now`, may
    /// be answered without a fresh check: its expiry plus the leeway, and
    /// at most [`MAX_AGE_SECS`].
    pub fn until(&self, expires_at: u64, now: u64) -> u64 {
        expires_at
            .saturating_add(self.leeway)
            .min(now.saturating_add(MAX_AGE_SECS))
    }

    /// Remembers a token that just verified.
    pub fn put(&self, key: Key, identity: &Arc<Identity>, expires_at: u64, now: u64) {
        let until = self.until(expires_at, now);
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        if shard.len() >= PER_SHARD {
            shard.retain(|_, e| now < e.until);
            if shard.len() >= PER_SHARD {
                shard.clear();
            }
        }
        shard.insert(
            key,
            Entry {
                identity: identity.clone(),
                expires_at,
                until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str) -> Arc<Identity> {
        Arc::new(Identity {
            sub: sub.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_verified_token_answers_until_its_expiry_and_only_for_itself() {
        let v = Verified::new(60);
        let k = Verified::key("a.b.c");
        v.put(k, &id("alice"), 1_000, 900);
        assert_eq!(
            v.get(&k, 950).map(|(i, e, u)| (i.sub.clone(), e, u)),
            Some(("alice".into(), 1_000, 1_060))
        );
        let (a, b) = (v.get(&k, 950).unwrap().0, v.get(&k, 950).unwrap().0);
        assert!(Arc::ptr_eq(&a, &b), "shared, not copied");
        assert!(v.get(&k, 1_059).is_some(), "within the leeway");
        assert!(v.get(&k, 1_060).is_none(), "expired");
        assert!(
            v.get(&Verified::key("a.b.d"), 950).is_none(),
            "one byte differs"
        );
    }

    #[test]
    fn entries_age_out_and_shards_stay_bounded() {
        let v = Verified::new(60);
        let k = Verified::key("t");
        v.put(k, &id("a"), u64::MAX / 2, 0);
        assert!(v.get(&k, MAX_AGE_SECS - 1).is_some());
        assert!(
            v.get(&k, MAX_AGE_SECS).is_none(),
            "re-verified after its age limit"
        );
        for i in 0..(SHARDS * PER_SHARD * 3) {
            v.put(Verified::key(&i.to_string()), &id("x"), 10_000, 0);
        }
        for s in &v.shards {
            assert!(s.lock().unwrap().len() <= PER_SHARD);
        }
    }
}
