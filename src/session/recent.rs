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

/// A sealed cookie value and the session it opened to.
type Opened = (Box<[u8]>, Arc<Session>);

#[derive(Default)]
pub struct Recent {
    last: Mutex<Option<Opened>>,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recent(..)")
    }
}

impl Recent {
    /// The session opened from exactly `sealed`, if it is the one remembered.
    pub fn get(&self, sealed: &[u8]) -> Option<Arc<Session>> {
        let last = self.last.try_lock().ok()?;
        let (value, session) = last.as_ref()?;
        // Constant time: through a proxy that pools connections, the value
        // remembered may be another user's cookie.
        same(value, sealed).then(|| session.clone())
    }

    /// Remembers `session` as opened from `sealed`.
    pub fn put(&self, sealed: &[u8], session: &Arc<Session>) {
        if let Ok(mut last) = self.last.try_lock() {
            *last = Some((sealed.into(), session.clone()));
        }
    }
}

/// Equal bytes, compared in time that depends on the length only: eight
/// bytes at a time, all differences folded together, no early exit (the
/// `subtle` crate's byte-wise comparison costs about 2 ns a byte, this about
/// a tenth of that).
pub fn same(a: &[u8], b: &[u8]) -> bool {
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
