//! A request's or answer's header fields, read the same way whether hyper
//! parsed them into a [`HeaderMap`] or the gate's own HTTP/1.1 path parsed
//! them in place ([`Spans`] into the head's bytes). Every rule that reads
//! headers on the request path (which headers go upstream, which cookie is
//! the session, how an answer is framed) is written once, against
//! [`Fields`], so the two paths cannot drift apart.

use http::HeaderMap;

/// Where one header's name and value are in a head's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl Span {
    /// The span of `name` and `value`, both slices of `head`.
    pub fn of(head: &[u8], name: &[u8], value: &[u8]) -> Self {
        let base = head.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).saturating_sub(base);
            // Heads are bounded far below 4 GiB (`CT_MAX_HEADER_BYTES`).
            let start = u32::try_from(start).unwrap_or(u32::MAX);
            (
                start,
                start.saturating_add(u32::try_from(s.len()).unwrap_or(0)),
            )
        };
        Self {
            name: at(name),
            value: at(value),
        }
    }
}

/// Header fields, in either form. Names compare without regard to case.
#[derive(Clone, Copy, Debug)]
pub enum Fields<'a> {
    Map(&'a HeaderMap),
    /// Fields of a head parsed in place: `head` is its bytes.
    Spans {
        head: &'a [u8],
        spans: &'a [Span],
    },
}

impl<'a> Fields<'a> {
    /// Every field (a map's grouped by name), as name and value bytes.
    pub fn iter(self) -> Iter<'a> {
        match self {
            Fields::Map(m) => Iter::Map(m.iter()),
            Fields::Spans { head, spans } => Iter::Spans(head, spans.iter()),
        }
    }

    /// The values of the fields named `name` (lowercase), in order.
    pub fn values(self, name: &'static str) -> Values<'a> {
        match self {
            Fields::Map(m) => Values::Map(m.get_all(name).iter()),
            Fields::Spans { head, spans } => Values::Spans {
                head,
                spans: spans.iter(),
                name: name.as_bytes(),
            },
        }
    }

    /// The first value of `name` (lowercase).
    pub fn get(self, name: &'static str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    pub fn has(self, name: &'static str) -> bool {
        self.get(name).is_some()
    }
}

/// [`Fields::iter`].
pub enum Iter<'a> {
    Map(http::header::Iter<'a, http::HeaderValue>),
    Spans(&'a [u8], std::slice::Iter<'a, Span>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Map(it) => it
                .next()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            Iter::Spans(head, it) => it
                .next()
                .map(|s| (slice(head, s.name), slice(head, s.value))),
        }
    }
}

/// [`Fields::values`].
pub enum Values<'a> {
    Map(http::header::ValueIter<'a, http::HeaderValue>),
    Spans {
        head: &'a [u8],
        spans: std::slice::Iter<'a, Span>,
        name: &'static [u8],
    },
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Map(it) => it.next().map(http::HeaderValue::as_bytes),
            Values::Spans { head, spans, name } => spans
                .find(|s| {
                    // Lengths first: most names differ in length.
                    s.name.1.saturating_sub(s.name.0) as usize == name.len()
                        && slice(head, s.name).eq_ignore_ascii_case(name)
                })
                .map(|s| slice(head, s.value)),
        }
    }
}

/// `map`'s headers written as a `GET /` request head and parsed back in
/// place, in the map's order (for tests and benchmarks that compare the two
/// forms); `None` if the head does not parse.
#[doc(hidden)]
pub fn head_of(map: &HeaderMap) -> Option<(Vec<u8>, Vec<Span>)> {
    let mut wire = b"GET / HTTP/1.1\r\n".to_vec();
    for (name, value) in map {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    let mut parsed = vec![httparse::EMPTY_HEADER; map.len()];
    let mut req = httparse::Request::new(&mut parsed);
    if !req.parse(&wire).ok()?.is_complete() {
        return None;
    }
    let spans = req
        .headers
        .iter()
        .map(|h| Span::of(&wire, h.name.as_bytes(), h.value))
        .collect();
    Some((wire, spans))
}

fn slice(head: &[u8], (start, end): (u32, u32)) -> &[u8] {
    head.get(start as usize..end as usize).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parsed(head: &[u8]) -> Vec<Span> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head).unwrap().is_complete());
        req.headers
            .iter()
            .map(|h| Span::of(head, h.name.as_bytes(), h.value))
            .collect()
    }

    #[test]
    fn both_forms_read_the_same_fields() {
        let head = b"GET / HTTP/1.1\r\nCookie: a=1\r\nConnection: x-one, Close\r\ncOOKIE: b=2\r\nHost: h\r\n\r\n";
        let spans = parsed(head);
        let raw = Fields::Spans {
            head,
            spans: &spans,
        };
        let mut map = HeaderMap::new();
        map.append("cookie", HeaderValue::from_static("a=1"));
        map.append("connection", HeaderValue::from_static("x-one, Close"));
        map.append("cookie", HeaderValue::from_static("b=2"));
        map.append("host", HeaderValue::from_static("h"));
        for fields in [raw, Fields::Map(&map)] {
            let cookies: Vec<&[u8]> = fields.values("cookie").collect();
            assert_eq!(cookies, [&b"a=1"[..], b"b=2"], "{fields:?}");
            assert_eq!(fields.get("host"), Some(&b"h"[..]));
            let connection: Vec<&[u8]> = fields.values("connection").collect();
            assert_eq!(connection, [&b"x-one, Close"[..]]);
            assert!(!fields.has("upgrade"));
            assert_eq!(fields.iter().count(), 4);
        }
        let names: Vec<&[u8]> = raw.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Cookie"[..], b"Connection", b"cOOKIE", b"Host"]);
    }
}
