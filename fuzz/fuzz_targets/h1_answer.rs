//! `ssogate::proxy::h1`'s answer reading (head, framing, body decoding) on
//! arbitrary upstream bytes, through `decode_for_fuzzing`.
//!
//! The first input byte picks the request (bit 0: `HEAD`, bit 1: a WebSocket
//! upgrade) and the second how the rest arrives (reads of 1 to 64 bytes).
//! Properties: never panics; the outcome — status, header count, body,
//! whether the framing lets the connection be reused, the bytes after the
//! answer — or the error is the same whether the bytes come in one read, in
//! reads of that size, or one byte at a time (the upstream decides where a
//! read ends, so nothing may depend on it); what is after the answer is the
//! input's tail, and the body is never longer than the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssogate::proxy::h1::decode_for_fuzzing;

fuzz_target!(|data: &[u8]| {
    let [flags, size, answer @ ..] = data else {
        return;
    };
    let (head_request, upgrade) = (flags & 1 != 0, flags & 2 != 0);
    let whole = decode_for_fuzzing(&[answer], head_request, upgrade);
    let reads: Vec<&[u8]> = answer.chunks(usize::from(size % 64) + 1).collect();
    let chunked = decode_for_fuzzing(&reads, head_request, upgrade);
    assert_eq!(whole, chunked, "reads of {} bytes differ", size % 64 + 1);
    if answer.len() <= 4096 {
        let bytes: Vec<&[u8]> = answer.chunks(1).collect();
        let bytewise = decode_for_fuzzing(&bytes, head_request, upgrade);
        assert_eq!(whole, bytewise, "one byte at a time differs");
    }
    if let Ok(d) = &whole {
        assert!(d.body.len() <= answer.len());
        assert!(
            answer.ends_with(&d.rest),
            "the rest is not the input's tail"
        );
    }
});
