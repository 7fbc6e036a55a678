//! Header hygiene, in one pure function each way.
//!
//! Towards the upstream: hop-by-hop headers and those `Connection` lists go
//! (kept only for a WebSocket upgrade); every client-sent copy of a header the
//! gate owns goes, in any case and with `_` for `-`; the gate's own cookies
//! go; then the gate adds `X-Forwarded-*`, the identity headers and `Host`.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::identity::Identity;
use crate::session::CookieNames;

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the gate adds to a forwarded request.
pub struct Outbound<'a> {
    /// The peer's address, as the `X-Forwarded-For` value it becomes.
    pub peer: &'a HeaderValue,
    /// `https` or `http`, from `CT_SERVER_URL`.
    pub proto: &'a HeaderValue,
    /// The public host (and port) from `CT_SERVER_URL`, never the client's `Host`.
    pub host: &'a HeaderValue,
    pub identity: Option<&'a Identity>,
    pub upgrade: bool,
    /// The peer is in `CT_TRUSTED_PROXIES`: keep the client's
    /// `X-Forwarded-For` and append the peer, instead of replacing it.
    pub trusted_peer: bool,
}

/// A header name the gate owns, in any spelling: `X-Forwarded-*`,
/// `Forwarded`, `X-Real-IP`, with `_` accepted for `-`.
pub fn is_owned(name: &str) -> bool {
    let b = name.as_bytes();
    let eq = |s: &str| b.len() == s.len() && b.iter().zip(s.bytes()).all(|(x, y)| norm(*x) == y);
    let prefix =
        |s: &str| b.len() >= s.len() && b.iter().zip(s.bytes()).all(|(x, y)| norm(*x) == y);
    prefix("x-forwarded-") || eq("forwarded") || eq("x-real-ip")
}

fn norm(b: u8) -> u8 {
    match b.to_ascii_lowercase() {
        b'_' => b'-',
        o => o,
    }
}

/// Headers named in `Connection` (they are hop-by-hop by declaration).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        for name in connection_listed(headers) {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Prepares a request's headers for the upstream.
pub fn to_upstream(headers: &mut HeaderMap, out: &Outbound<'_>) {
    strip_hop_by_hop(headers, out.upgrade);
    let chain = out.trusted_peer.then(|| forwarded_chain(headers)).flatten();
    let owned: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_owned(n.as_str()))
        .cloned()
        .collect();
    for name in owned {
        headers.remove(name);
    }
    strip_gate_cookies(headers);
    // One growth for everything added below, if any.
    headers.reserve(7);
    let xff = match chain {
        Some(chain) => {
            let peer = out.peer.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{chain}, {peer}")).ok()
        }
        None => Some(out.peer.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, out.proto.clone());
    headers.insert(X_FORWARDED_HOST, out.host.clone());
    headers.insert(header::HOST, out.host.clone());
    if let Some(identity) = out.identity {
        identity.insert_headers(headers);
    }
}

/// A trusted proxy's `X-Forwarded-For` (all its lines, joined), if it is
/// plain printable ASCII; anything else is dropped as if untrusted.
fn forwarded_chain(headers: &HeaderMap) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str().ok().map(str::trim))
        .collect::<Option<Vec<_>>>()?;
    let chain = parts.join(", ");
    (!chain.is_empty() && chain.len() <= 1024).then_some(chain)
}

/// Removes the gate's cookies and joins what is left into one `Cookie`
/// header (HTTP/2 clients send one per cookie; HTTP/1.1 upstreams want one).
pub fn strip_gate_cookies(headers: &mut HeaderMap) {
    let values = headers.get_all(header::COOKIE);
    let mut iter = values.iter();
    let (Some(first), None) = (iter.next(), iter.next()) else {
        if headers.contains_key(header::COOKIE) {
            rebuild_cookies(headers);
        }
        return;
    };
    // Common case: one header. Rebuild only when it holds a gate cookie.
    let has_ours = first
        .to_str()
        .map(|v| v.split(';').any(|p| CookieNames::is_ours(p.trim_start())))
        .unwrap_or(false);
    if has_ours {
        rebuild_cookies(headers);
    }
}

fn rebuild_cookies(headers: &mut HeaderMap) {
    let mut joined = String::new();
    for pair in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !CookieNames::is_ours(p))
    {
        if !joined.is_empty() {
            joined.push_str("; ");
        }
        joined.push_str(pair);
    }
    headers.remove(header::COOKIE);
    if let (false, Ok(v)) = (joined.is_empty(), HeaderValue::from_str(&joined)) {
        headers.insert(header::COOKIE, v);
    }
}

/// Prepares an upstream response's headers for the client.
pub fn from_upstream(headers: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
}

#[cfg(test)]
mod tests;
