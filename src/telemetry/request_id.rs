//! Request ids: an incoming `X-Request-Id` is kept when it is a sane token
//! (visible ASCII, at most [`MAX_LEN`] bytes), otherwise one is made: a
//! random per-thread prefix and the thread's counter, unique without a
//! syscall, a lock or an atomic the serving threads share. The id goes into
//! the request's log span, to the upstream and back to the client.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest incoming id kept.
pub const MAX_LEN: usize = 128;

/// Bytes of made ids a thread keeps in one block (see [`RequestId::into_value`]).
const ARENA: usize = 4096;

thread_local! {
    /// This thread's prefix (random, drawn on first use) and next number.
    static NEXT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
    /// Where this thread's made ids are written for their header values.
    static ID_ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A request's id.
#[derive(Clone, Debug)]
pub enum RequestId {
    /// The client's own, passed on to the upstream as it came.
    Client(HeaderValue),
    /// Made by the gate (hex digits); it replaces any the client sent.
    Made([u8; 32]),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match self {
            // Usable ids are visible ASCII.
            Self::Client(v) => v.to_str().unwrap_or_default(),
            Self::Made(b) => std::str::from_utf8(b).unwrap_or_default(),
        }
    }

    /// The id the upstream is to be sent in place of the client's, if the
    /// gate made it.
    pub fn made(&self) -> Option<&[u8]> {
        match self {
            Self::Client(_) => None,
            Self::Made(b) => Some(b),
        }
    }

    /// The id as the response's header value. A made id is cut from a
    /// per-thread block of [`ARENA`] bytes that its values share, so it
    /// costs no allocation of its own (one per block of 128 ids).
    pub fn into_value(self) -> HeaderValue {
        match self {
            Self::Client(v) => v,
            Self::Made(b) => {
                let shared = ID_ARENA.with_borrow_mut(|arena| {
                    if arena.capacity() < b.len() {
                        *arena = BytesMut::with_capacity(ARENA);
                    }
                    arena.extend_from_slice(&b);
                    arena.split().freeze()
                });
                // Hex digits are always a valid header value.
                HeaderValue::from_maybe_shared(shared).unwrap_or(HeaderValue::from_static("-"))
            }
        }
    }
}

/// The request's id: the client's, if usable, or a new one.
pub fn of(headers: &HeaderMap) -> RequestId {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if is_usable(v.as_bytes()) => RequestId::Client(v.clone()),
        _ => RequestId::Made(generate()),
    }
}

/// [`of`] over header fields in either form.
pub fn of_fields(fields: crate::fields::Fields<'_>) -> RequestId {
    match fields.get("x-request-id") {
        Some(v) if is_usable(v) => HeaderValue::from_bytes(v)
            .map_or_else(|_| RequestId::Made(generate()), RequestId::Client),
        _ => RequestId::Made(generate()),
    }
}

fn is_usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

fn generate() -> [u8; 32] {
    let (prefix, n) = NEXT.with(|next| {
        let (prefix, n) = next.get().unwrap_or_else(|| (rand::random::<u64>(), 0));
        next.set(Some((prefix, n.wrapping_add(1))));
        (prefix, n)
    });
    let mut buf = [0u8; 32];
    hex(prefix, &mut buf[..16]);
    hex(n, &mut buf[16..]);
    buf
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_incoming_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let kept = of(&h);
        assert_eq!(kept.as_str(), "abc-123");
        assert!(kept.made().is_none(), "the client's id goes on as it came");
        assert_eq!(kept.into_value(), "abc-123");
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = of(&h);
            assert_eq!(id.as_str().len(), 32, "{bad:?} replaced by a generated id");
            assert_eq!(id.made(), Some(id.as_str().as_bytes()));
        }
        let (a, b) = (of(&HeaderMap::new()), of(&HeaderMap::new()));
        assert_ne!(a.as_str(), b.as_str(), "generated ids are unique");
        let other = std::thread::spawn(|| of(&HeaderMap::new())).join().unwrap();
        assert_ne!(
            a.as_str()[..16],
            other.as_str()[..16],
            "each thread has its own prefix"
        );
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.clone().into_value(), a.as_str());
    }

    #[test]
    fn made_ids_sharing_a_block_keep_their_own_values() {
        // More than one block's worth, all alive at once.
        let ids: Vec<RequestId> = (0..3 * ARENA / 32).map(|_| of(&HeaderMap::new())).collect();
        let values: Vec<HeaderValue> = ids.iter().cloned().map(RequestId::into_value).collect();
        for (id, value) in ids.iter().zip(&values) {
            assert_eq!(value, id.as_str());
        }
    }
}
