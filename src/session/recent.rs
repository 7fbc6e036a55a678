//! The last session a connection's requests carried.
//!
//! A browser or API client sends the same session cookie on every request of
//! a keep-alive (or HTTP/2) connection, so the session it opened last time is
//! remembered per connection, next to the exact sealed value it came from:
//! the next request carrying that same value skips base64, AES-GCM and JSON
//! and costs one constant-time comparison. Nothing is shared between
//! connections (no lock anyone waits on: a busy memo is simply skipped) and
//! the memo goes with its connection. Revocation is still checked on every
//! request, and a different value (a refreshed or another user's cookie, as
//! through a pooling proxy in front) opens as usual and replaces it.

use std::sync::{Arc, Mutex};

use super::Session;

/// The session a connection's last cookie opened to, by its sealed value.
pub type Recent = Memo<Arc<Session>>;

/// What a connection remembers of its last credential: the exact bytes it
/// came as, and what they were found to be. Also the bearer token memo
/// (`provider::recent_bearer`).
pub struct Memo<V> {
    last: Mutex<Option<(Box<[u8]>, V)>>,
}

impl<V> Default for Memo<V> {
    fn default() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }
}

impl<V> std::fmt::Debug for Memo<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo(..)")
    }
}

impl<V: Clone> Memo<V> {
    /// What was remembered for exactly `key`, if it is the key remembered.
    pub fn get(&self, key: &[u8]) -> Option<V> {
        let last = self.last.try_lock().ok()?;
        let (remembered, value) = last.as_ref()?;
        // Constant time: through a proxy that pools connections, the value
        // remembered may be another user's credential.
        same(remembered, key).then(|| value.clone())
    }

    /// Remembers `value` for `key`, in place of whatever was before.
    pub fn put(&self, key: &[u8], value: &V) {
        if let Ok(mut last) = self.last.try_lock() {
            *last = Some((key.into(), value.clone()));
        }
    }
}

/// Equal bytes, compared in time that depends on the length only: eight
/// bytes at a time, all differences folded together, no early exit (the
/// `subtle` crate's byte-wise comparison costs about 2 ns a byte, this about
/// a tenth of that).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = wa
        .remainder()
        .iter()
        .zip(wb.remainder())
        .fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    let words = wa.zip(wb).fold(tail, |acc, (x, y)| {
        let word = |c: &[u8]| c.try_into().map_or(0, u64::from_ne_bytes);
        acc | (word(x) ^ word(y))
    });
    std::hint::black_box(words) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn session(sub: &str) -> Arc<Session> {
        Arc::new(Session {
            id: "id".into(),
            option: "oidc".into(),
            identity: Identity {
                sub: sub.into(),
                email: None,
                name: None,
                preferred_username: None,
            },
            sid: None,
            created_at: 0,
            issued_at: 0,
            expires_at: 1,
            refresh_token: None,
            id_token: None,
        })
    }

    #[test]
    fn same_is_byte_equality() {
        let base: Vec<u8> = (0..=255u8).cycle().take(1_003).collect();
        assert!(same(&base, &base.clone()));
        assert!(same(b"", b""));
        for i in [0, 7, 8, 500, 999, 1_002] {
            let mut other = base.clone();
            other[i] ^= 0x20;
            assert!(!same(&base, &other), "byte {i}");
        }
        assert!(!same(&base, &base[..1_002]));
    }

    #[test]
    fn only_the_exact_value_remembered_answers() {
        let r = Recent::default();
        assert!(r.get(b"abc").is_none());
        r.put(b"abc", &session("alice"));
        assert_eq!(r.get(b"abc").unwrap().identity.sub, "alice");
        for other in [&b"abd"[..], b"ab", b"abcd", b""] {
            assert!(r.get(other).is_none(), "{other:?}");
        }
        r.put(b"xyz", &session("bob"));
        assert!(r.get(b"abc").is_none(), "replaced");
        assert_eq!(r.get(b"xyz").unwrap().identity.sub, "bob");
    }
}
