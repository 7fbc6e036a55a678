//! The server's own HTTP/1.1 path (`ssogate::server`'s `fast.rs`) choosing
//! which request heads it serves, on arbitrary client bytes.
//!
//! Properties (`fast_path_for_fuzzing`): no panic; every head it would
//! serve is read by the framing watcher to the same length with the same
//! body length (none, or one `Content-Length`), and by httparse (as hyper configures it) as complete to that length, so
//! the two HTTP/1.1 readers never disagree on where a request ends; and the
//! choice does not depend on the bytes after the head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssogate::server::fast_path_for_fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = fast_path_for_fuzzing(data) {
        panic!("{e}: {data:?}");
    }
});
