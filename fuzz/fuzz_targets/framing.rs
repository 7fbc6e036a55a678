//! The request framing watcher (`ssogate::server`'s `Framing`) on arbitrary
//! client bytes.
//!
//! Properties: its head scanner reads every request head httparse reads
//! completely (as hyper configures it) to the same length and body framing,
//! and waits wherever httparse waits (`scan_for_fuzzing`), for the input and
//! for every prefix a read could end at; following the input in reads of 1
//! to 64 bytes (the first byte picks the size) never panics, and its verdicts
//! never go back: once a request is ambiguous, so is every later one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssogate::server::{follow_for_fuzzing, scan_for_fuzzing};

fuzz_target!(|data: &[u8]| {
    let [size, bytes @ ..] = data else {
        return;
    };
    if let Err(e) = scan_for_fuzzing(bytes) {
        panic!("{e}: {bytes:?}");
    }
    for cut in (0..bytes.len()).step_by(usize::from(*size % 16) + 1) {
        if let Err(e) = scan_for_fuzzing(&bytes[..cut]) {
            panic!("prefix of {cut}: {e}: {bytes:?}");
        }
    }
    let reads: Vec<&[u8]> = bytes.chunks(usize::from(size % 64) + 1).collect();
    for reads in [vec![bytes], reads] {
        let (_, verdicts) = follow_for_fuzzing(&reads, 64 * 1024);
        if let Some(first) = verdicts.iter().position(|v| *v) {
            assert!(
                verdicts[first..].iter().all(|v| *v),
                "a verdict went back: {verdicts:?}"
            );
        }
    }
});
