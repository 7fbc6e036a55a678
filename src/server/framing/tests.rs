use std::sync::Arc;

use super::*;

/// A smuggling attempt: its own head is ambiguous.
const AMBIGUOUS: &[u8] =
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// Feeds `bytes` cut into pieces of `step` bytes; returns the watcher and the
/// verdict for each of `requests` requests, in order.
fn follow(bytes: &[u8], step: usize, requests: usize) -> (Framing<()>, Vec<bool>) {
    let verdicts = Arc::new(Verdicts::default());
    let mut f = Framing::new((), 8192, verdicts.clone());
    for piece in bytes.chunks(step) {
        f.feed(piece);
    }
    let seen = (0..requests)
        .map(|_| verdicts.next_is_ambiguous())
        .collect();
    (f, seen)
}

/// A keep-alive sequence: no body, a fixed body that looks like a smuggled
/// request, chunks with an extension and trailers, leading blank lines.
fn sequence() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    s.extend_from_slice(
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n",
            AMBIGUOUS.len()
        )
        .as_bytes(),
    );
    s.extend_from_slice(AMBIGUOUS);
    s.extend_from_slice(
        b"\r\nPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    );
    s.extend_from_slice(b"5;name=value\r\nhello\r\n1A\r\n");
    s.extend_from_slice(&AMBIGUOUS[..0x1A]);
    s.extend_from_slice(b"\r\n0\r\nX-Trailer: 1\r\nContent-Length: 9\r\n\r\n");
    s.extend_from_slice(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n");
    s
}

#[test]
fn a_clean_keep_alive_sequence_is_followed_in_any_read_sizes() {
    let bytes = sequence();
    for step in [1, 2, 3, 7, 64, bytes.len()] {
        let (f, seen) = follow(&bytes, step, 4);
        assert_eq!(f.state, State::Head, "step {step}");
        assert_eq!(f.request, 4, "step {step}: requests followed");
        assert_eq!(seen, [false; 4], "step {step}");
        assert!(f.partial.is_empty(), "step {step}");
    }
}

#[test]
fn an_ambiguous_head_marks_that_request_and_the_ones_after_it() {
    let mut bytes = sequence();
    bytes.extend_from_slice(AMBIGUOUS);
    bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    for step in [1, 5, bytes.len()] {
        let (f, seen) = follow(&bytes, step, 6);
        assert_eq!(f.state, State::Off, "step {step}");
        assert_eq!(
            seen,
            [false, false, false, false, true, true],
            "step {step}"
        );
    }
}

#[test]
fn every_ambiguous_framing_is_caught() {
    for head in [
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nCONTENT-LENGTH: 4\r\ncontent-length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
    ] {
        let (_, seen) = follow(head.as_bytes(), 3, 1);
        assert_eq!(seen, [true], "{head:?}");
    }
}

#[test]
fn what_it_cannot_follow_switches_it_off_without_a_verdict() {
    for bytes in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    ] {
        let (f, seen) = follow(bytes, 4, 2);
        assert_eq!(f.state, State::Off, "{bytes:?}");
        assert_eq!(seen, [false, false], "{bytes:?}");
    }
}

#[test]
fn a_head_longer_than_the_limit_is_not_buffered_past_it() {
    let verdicts = Arc::new(Verdicts::default());
    let mut f = Framing::new((), 100, verdicts);
    f.feed(b"GET / HTTP/1.1\r\n");
    for _ in 0..100 {
        f.feed(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(f.state, State::Off);
    assert!(f.partial.capacity() == 0, "the partial head is freed");
}

#[test]
fn a_websocket_upgrade_is_followed_until_its_frames_start() {
    let bytes = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    let (f, seen) = follow(bytes, 9, 2);
    assert_eq!(f.state, State::Off);
    assert_eq!(f.request, 1);
    assert_eq!(seen, [false, false]);
}

/// One request of a generated keep-alive sequence, and whether its head is ambiguous.
fn request(kind: u8, body: &[u8]) -> (Vec<u8>, bool) {
    let mut r = b"POST /p HTTP/1.1\r\nHost: x\r\n".to_vec();
    let ambiguous = match kind % 5 {
        0 => {
            r.extend_from_slice(b"\r\n");
            false
        }
        1 => {
            r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            r.extend_from_slice(body);
            false
        }
        2 => {
            r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in body.chunks(7) {
                r.extend_from_slice(format!("{:x};e=1\r\n", piece.len()).as_bytes());
                r.extend_from_slice(piece);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\nT: 1\r\n\r\n");
            false
        }
        3 => {
            r.extend_from_slice(b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
            true
        }
        _ => {
            r.extend_from_slice(b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n");
            true
        }
    };
    (r, ambiguous)
}

proptest::proptest! {
    /// However the bytes arrive, the verdict falls on exactly the first
    /// ambiguous request, whatever the bodies hold.
    #[test]
    fn the_verdict_is_the_first_ambiguous_request_for_any_reads(
        kinds in proptest::collection::vec((0u8..5, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 1..8),
        step in 1usize..50,
    ) {
        let mut bytes = Vec::new();
        let mut first = None;
        for (i, (kind, body)) in kinds.iter().enumerate() {
            let (r, ambiguous) = request(*kind, body);
            bytes.extend_from_slice(&r);
            if ambiguous && first.is_none() {
                first = Some(i);
            }
        }
        let (_, seen) = follow(&bytes, step, kinds.len());
        let expected: Vec<bool> = (0..kinds.len()).map(|i| first.is_some_and(|f| i >= f)).collect();
        proptest::prop_assert_eq!(seen, expected);
    }
}

/// The pieces generated heads are made of: good, odd and broken lines.
const LINES: &[&[u8]] = &[
    b"Host: x",
    b"Content-Length: 5",
    b"content-length:  7 ",
    b"CONTENT-LENGTH:\t0",
    b"Content-Length: 1, 1",
    b"Content-Length: x",
    b"Content-Length : 5",
    b"Transfer-Encoding: chunked",
    b"transfer-encoding: gzip, chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, gzip",
    b"X-A: v:w",
    b"X-B:",
    b"X-C: \xfc\xfd",
    b"Bad Header",
    b" folded",
    b": no name",
    b"X-D: a\rb",
    b"",
];

const REQUEST_LINES: &[&[u8]] = &[
    b"GET /x HTTP/1.1",
    b"POST / HTTP/1.0",
    b"OPTIONS * HTTP/1.1",
    b"GET /x HTTP/2.0",
    b"GET  /x HTTP/1.1",
    b"G\x01T / HTTP/1.1",
    b"GET /x",
    b"PRI * HTTP/2.0",
];

fn generated_head(blank: &[bool], start: usize, lines: &[(usize, bool)], tail: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for crlf in blank {
        head.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
    }
    head.extend_from_slice(REQUEST_LINES[start % REQUEST_LINES.len()]);
    head.extend_from_slice(b"\r\n");
    for (i, crlf) in lines {
        head.extend_from_slice(LINES[i % LINES.len()]);
        head.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
    }
    head.extend_from_slice(tail);
    head
}

fn agrees_with_httparse(data: &[u8]) -> Result<(), String> {
    scan_for_fuzzing(data)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Every head httparse reads completely is read to the same length and
    /// framing; every head it wants more of, the watcher waits for too.
    #[test]
    fn the_scanner_reads_every_head_as_httparse_does(
        blank in proptest::collection::vec(proptest::bool::ANY, 0..3),
        start in 0usize..8,
        lines in proptest::collection::vec((0usize..19, proptest::bool::ANY), 0..8),
        tail in proptest::collection::vec(proptest::sample::select(&b"\r\nab: 0"[..]), 0..6),
        cut in 0usize..400,
    ) {
        let head = generated_head(&blank, start, &lines, &tail);
        // The whole of it, and every prefix a read could end at.
        proptest::prop_assert_eq!(agrees_with_httparse(&head), Ok(()));
        proptest::prop_assert_eq!(agrees_with_httparse(&head[..cut.min(head.len())]), Ok(()));
    }

    #[test]
    fn the_scanner_agrees_with_httparse_on_arbitrary_bytes(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
    ) {
        proptest::prop_assert_eq!(agrees_with_httparse(&data), Ok(()));
    }
}

#[test]
fn the_scanner_reads_blank_lines_versions_and_line_ends_as_httparse_does() {
    for head in [
        &b"\r\n\nGET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"GET / HTTP/1.1\nTransfer-Encoding: chunked\n\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n\n",
        b"GET / HTTP/1.1\r\n\r",
        b"\r",
        b"\rX",
        b"GET",
        b"GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
    ] {
        assert_eq!(agrees_with_httparse(head), Ok(()), "{head:?}");
    }
}
