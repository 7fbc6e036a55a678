//! `ssogate::proxy::h2`'s reading of the HTTP/1.1 head the gate writes into
//! an HTTP/2 request (`CT_UPSTREAM_HTTP2`), through `request_for_fuzzing`.
//!
//! The input is split at its first `\n`: the first part is the request
//! target (origin form, as the gate's path rules leave it), the rest header
//! lines separated by `\n`. The head is built the way `h1::encode_head`
//! writes it (`GET target HTTP/1.1`, the gate's `host` line, the lines but
//! any `host` one, a blank line), and the raw input is tried as a head too.
//! Properties: never panics; a request it makes has the target as its path
//! and query, the host line as its authority, no header HTTP/2 forbids and
//! no `host` header, and every header value it keeps is one of the input's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssogate::proxy::h2::request_for_fuzzing;

const FORBIDDEN: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "host",
];

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a head: no panic, whatever the outcome.
    let _ = request_for_fuzzing(data);

    let (target, lines) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // An origin-form target, as the gate's path rules leave it.
    if !target.starts_with(b"/") || target.contains(&b'\r') || target.contains(&b' ') {
        return;
    }
    let mut head = b"GET ".to_vec();
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\nhost: gate.example:8443\r\n");
    let mut values: Vec<&[u8]> = Vec::new();
    for line in lines.split(|&b| b == b'\n') {
        // The client's `Host` never goes on (`headers::to_upstream`).
        let is_host = line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"host:");
        if line.is_empty() || line.contains(&b'\r') || is_host {
            continue;
        }
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            values.push(line[colon + 1..].trim_ascii());
        }
    }
    head.extend_from_slice(b"\r\n");
    let Ok((method, uri, headers)) = request_for_fuzzing(&head) else {
        return;
    };
    assert_eq!(method, "GET");
    let prefix = "http://gate.example:8443";
    let path = uri
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("authority lost: {uri}"));
    // `http::Uri` drops a fragment and nothing else.
    let sent = target.split(|&b| b == b'#').next().unwrap_or_default();
    assert_eq!(path.as_bytes(), sent, "the target changed");
    for (name, value) in &headers {
        assert!(
            !FORBIDDEN.contains(&name.as_str()),
            "{name} went over HTTP/2"
        );
        assert!(
            values.contains(&value.as_slice()),
            "{name}: a value not in the input"
        );
    }
});
