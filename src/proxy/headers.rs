//! Header hygiene, in one pure function each way.
//!
//! Towards the upstream, [`to_upstream`] writes the request's header lines
//! straight into the head the gate sends, in one pass over the client's
//! headers and without changing them: hop-by-hop headers and those the
//! `Connection` header lists are left out (`Upgrade` is kept for a
//! WebSocket upgrade); so is every client-sent copy of a header the gate
//! owns, in any case and with `_` for `-`, and the gate's own cookies; then
//! the gate's `X-Forwarded-*`, identity headers, `Host` and, when the gate
//! made the request id, `X-Request-Id` follow. Writing instead of editing a
//! header map costs no hash look-up per header removed or added and no
//! allocation for a value the gate adds.
//!
//! Towards the client, [`from_upstream`] removes the answer's hop-by-hop
//! headers, looking each up only when one pass has seen it.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::fields::Fields;
use crate::identity::{self, Identity};
use crate::session::CookieNames;
use crate::session::cookies::pairs;
use crate::telemetry::request_id::X_REQUEST_ID;

/// How many headers are hop-by-hop by name.
const HOPS: usize = 8;

const HOP_BY_HOP: [HeaderName; HOPS] = [
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
    /// A request id the gate made: it replaces the client's `X-Request-Id`
    /// (which is otherwise passed on as it came).
    pub request_id: Option<&'a [u8]>,
}

/// A header name the gate owns, in any spelling: `X-Forwarded-*`,
/// `Forwarded`, `X-Real-IP`, with `_` accepted for `-`.
pub fn is_owned(name: &[u8]) -> bool {
    let b = name;
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

/// Whether `name` (any case) is `known`'s.
fn is(name: &[u8], known: &HeaderName) -> bool {
    name.eq_ignore_ascii_case(known.as_str().as_bytes())
}

/// Whether a request header stays out of what the upstream is sent (the
/// gate writes its own `Host`, `Connection` and request id; the framing
/// headers are the HTTP/1.1 client's, and `Expect` was answered on the
/// client's side). Names are compared in any case: the gate's own HTTP/1.1
/// path hands them on as the client spelt them.
fn left_out(name: &[u8], fields: Fields<'_>, out: &Outbound<'_>, listing: bool) -> bool {
    let upgrade = is(name, &header::UPGRADE);
    if HOP_BY_HOP.iter().any(|h| is(name, h))
        || is(name, &header::HOST)
        || is(name, &header::CONTENT_LENGTH)
        || is(name, &header::EXPECT)
        || (upgrade && !out.upgrade)
        || (out.request_id.is_some() && is(name, &X_REQUEST_ID))
        || is_owned(name)
    {
        return true;
    }
    listing && !(out.upgrade && upgrade) && connection_lists(fields, name)
}

/// Whether a `Connection` header lists `name`.
pub fn connection_lists(fields: Fields<'_>, name: &[u8]) -> bool {
    fields
        .values("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

/// Writes the request's header lines for the upstream (`name: value` and
/// CRLF each) into `head`; `fields` are the client's, unchanged.
pub fn to_upstream(fields: Fields<'_>, out: &Outbound<'_>, head: &mut Vec<u8>) {
    let listing = fields.has("connection");
    let mut cookies_written = false;
    for (name, value) in fields.iter() {
        if left_out(name, fields, out, listing) {
            continue;
        }
        if !is(name, &header::COOKIE) {
            line(head, name, value);
        } else if !cookies_written {
            cookies_written = true;
            write_cookies(fields, value, head);
        }
    }
    match out.trusted_peer.then(|| forwarded_chain(fields)).flatten() {
        Some(chain) => {
            let at = start_line(head, X_FORWARDED_FOR.as_str());
            head.extend_from_slice(chain.as_bytes());
            head.extend_from_slice(b", ");
            head.extend_from_slice(out.peer.as_bytes());
            end_line(head, at);
        }
        None => line(
            head,
            X_FORWARDED_FOR.as_str().as_bytes(),
            out.peer.as_bytes(),
        ),
    }
    line(
        head,
        X_FORWARDED_PROTO.as_str().as_bytes(),
        out.proto.as_bytes(),
    );
    line(
        head,
        X_FORWARDED_HOST.as_str().as_bytes(),
        out.host.as_bytes(),
    );
    line(head, b"host", out.host.as_bytes());
    if out.upgrade {
        line(head, b"connection", b"upgrade");
    }
    if let Some(identity) = out.identity {
        let claims = [
            (identity::X_FORWARDED_USER, Some(&identity.sub)),
            (identity::X_FORWARDED_EMAIL, identity.email.as_ref()),
            (
                identity::X_FORWARDED_PREFERRED_USERNAME,
                identity.preferred_username.as_ref(),
            ),
        ];
        for (name, value) in claims {
            // A claim that cannot be a header value (control characters) is
            // left out rather than mangled.
            if let Some(v) = value.filter(|v| is_value(v.as_bytes())) {
                line(head, name.as_str().as_bytes(), v.as_bytes());
            }
        }
    }
    if let Some(id) = out.request_id {
        line(head, X_REQUEST_ID.as_str().as_bytes(), id);
    }
}

/// Whether `bytes` may be a header value as they are (what
/// `HeaderValue::from_bytes` accepts: no control character but tab).
fn is_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.reserve(name.len() + value.len() + 4);
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Where a line being written starts, and where its value starts.
#[derive(Clone, Copy)]
struct Started {
    line: usize,
    value: usize,
}

impl Started {
    fn has_value(self, head: &[u8]) -> bool {
        head.len() > self.value
    }
}

/// Starts a line whose value is written next.
fn start_line(head: &mut Vec<u8>, name: &str) -> Started {
    let line = head.len();
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    Started {
        line,
        value: head.len(),
    }
}

/// Ends a started line; one left without a value is taken back.
fn end_line(head: &mut Vec<u8>, started: Started) {
    if started.has_value(head) {
        head.extend_from_slice(b"\r\n");
    } else {
        head.truncate(started.line);
    }
}

/// A trusted proxy's `X-Forwarded-For` (all its lines, joined), if it is
/// plain printable ASCII; anything else is dropped as if untrusted.
fn forwarded_chain(fields: Fields<'_>) -> Option<String> {
    let parts: Vec<&str> = fields
        .values("x-forwarded-for")
        .map(|v| {
            std::str::from_utf8(v)
                .ok()
                .filter(|v| is_value(v.as_bytes()) && v.is_ascii())
                .map(str::trim)
        })
        .collect::<Option<Vec<_>>>()?;
    let chain = parts.join(", ");
    (!chain.is_empty() && chain.len() <= 1024).then_some(chain)
}

/// Writes one `Cookie` line: the client's cookies without the gate's, all
/// `Cookie` headers joined (HTTP/2 clients send one per cookie; HTTP/1.1
/// upstreams want one), or none when nothing is left. A single header
/// holding none of the gate's cookies goes on untouched. Cookies are read
/// as bytes: one that is not ASCII goes on as it came.
fn write_cookies(fields: Fields<'_>, first: &[u8], head: &mut Vec<u8>) {
    let at = start_line(head, header::COOKIE.as_str());
    // One pass: the kept pairs are written as they are found.
    let mut removed = false;
    for pair in fields.values("cookie").flat_map(pairs) {
        if pair.0.is_empty() {
            continue;
        }
        if CookieNames::is_our_name(pair.name()) {
            removed = true;
            continue;
        }
        if at.has_value(head) {
            head.extend_from_slice(b"; ");
        }
        head.extend_from_slice(pair.0);
    }
    if !removed && fields.values("cookie").nth(1).is_none() {
        head.truncate(at.line);
        return line(head, b"cookie", first);
    }
    end_line(head, at);
}

/// Prepares an upstream response's headers for the client: hop-by-hop
/// headers and those its `Connection` lists go (for an upgrade, `Upgrade`
/// stays and `Connection` becomes `upgrade`). One pass finds them; only
/// those found are looked up again to be removed.
pub fn from_upstream(headers: &mut HeaderMap, upgrade: bool) {
    let mut found = [false; HOPS];
    let mut upgrade_header = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found[i] = true;
        }
        upgrade_header |= *name == header::UPGRADE;
    }
    if found[0] {
        // Names the answer's `Connection` lists: hop-by-hop by declaration.
        // Values share the answer's head, so a clone copies nothing; the
        // common single `Connection` header needs no list either.
        let (first, more) = {
            let mut values = headers.get_all(header::CONNECTION).iter();
            (values.next().cloned(), values.next().is_some())
        };
        let rest: Vec<HeaderValue> = if more {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .skip(1)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        for value in first.iter().chain(&rest) {
            remove_listed(headers, value);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade_header {
        headers.remove(header::UPGRADE);
    }
}

/// Whether an upstream answer's header goes on to the client, for the
/// gate's own HTTP/1.1 path, which copies the answer's head as bytes: the
/// same headers [`from_upstream`] removes from a map (not an upgrade) stay
/// behind. `listing`: [`lists_headers`] of the answer.
pub fn answer_keeps(name: &[u8], fields: Fields<'_>, listing: bool) -> bool {
    if HOP_BY_HOP.iter().any(|h| is(name, h)) || is(name, &header::UPGRADE) {
        return false;
    }
    !(listing && !names_no_header(name) && connection_lists(fields, name))
}

/// Whether a message's `Connection` headers name any header (beyond
/// `close`, `keep-alive` and `upgrade`, which the hop-by-hop list covers).
pub fn lists_headers(fields: Fields<'_>) -> bool {
    fields
        .values("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| !names_no_header(t.trim_ascii()))
}

/// `Connection` tokens that name no header of their own.
fn names_no_header(token: &[u8]) -> bool {
    token.is_empty()
        || [&b"close"[..], b"keep-alive", b"upgrade"]
            .iter()
            .any(|t| token.eq_ignore_ascii_case(t))
}

/// Removes the headers a `Connection` value lists, but for the tokens that
/// name no header of their own.
fn remove_listed(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(listed) = connection.to_str() else {
        return;
    };
    for token in listed.split(',').map(str::trim) {
        if !names_no_header(token.as_bytes()) {
            headers.remove(token);
        }
    }
}

#[cfg(test)]
mod tests;
