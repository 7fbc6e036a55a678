//! The WebSocket relay's frame count (`ssogate::proxy::relay::Frames`) on
//! arbitrary upstream bytes: valid frames or not, any lengths.
//!
//! Properties: no panic; the count ends in the same state whether the
//! stream comes in one read or in reads of 1 to 256 bytes (the first byte
//! picks the size); in every read, `until_boundary` never reaches past the
//! read, and when it stops short, that is a frame end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssogate::proxy::relay::Frames;

fuzz_target!(|data: &[u8]| {
    let [size, stream @ ..] = data else {
        return;
    };
    let mut whole = Frames::default();
    whole.advance(stream);
    let mut reads = Frames::default();
    for read in stream.chunks(usize::from(*size) + 1) {
        let k = reads.until_boundary(read);
        assert!(k <= read.len(), "{k} of a {}-byte read", read.len());
        if k < read.len() {
            let mut at = reads;
            at.advance(&read[..k]);
            assert!(at.at_boundary(), "stopped {k} bytes in, not at a frame end");
        }
        reads.advance(read);
    }
    assert_eq!(whole, reads, "the count depends on how the stream was read");
});
