//! Request ids: an incoming `X-Request-Id` is kept when it is a sane token
//! (visible ASCII, at most [`MAX_LEN`] bytes), otherwise one is made: a
//! random per-thread prefix and the thread's counter, unique without a
//! syscall, a lock or an atomic the serving threads share. The id goes into
//! the request's log span, to the upstream and back to the client.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest incoming id kept.
pub const MAX_LEN: usize = 128;

thread_local! {
    /// This thread's prefix (random, drawn on first use) and next number.
    static NEXT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// The request's id: the client's, if usable, or a new one.
pub fn of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if is_usable(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

fn is_usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

fn generate() -> HeaderValue {
    let (prefix, n) = NEXT.with(|next| {
        let (prefix, n) = next.get().unwrap_or_else(|| (rand::random::<u64>(), 0));
        next.set(Some((prefix, n.wrapping_add(1))));
        (prefix, n)
    });
    let mut buf = [0u8; 32];
    hex(prefix, &mut buf[..16]);
    hex(n, &mut buf[16..]);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
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
        assert_eq!(of(&h), "abc-123");
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = of(&h);
            assert_eq!(id.len(), 32, "{bad:?} replaced by a generated id");
        }
        let (a, b) = (of(&HeaderMap::new()), of(&HeaderMap::new()));
        assert_ne!(a, b, "generated ids are unique");
        let other = std::thread::spawn(|| of(&HeaderMap::new())).join().unwrap();
        assert_ne!(
            a.as_bytes()[..16],
            other.as_bytes()[..16],
            "each thread has its own prefix"
        );
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
