//! What the log formatters' tests share: a writer that keeps what was
//! logged, and an error with a source.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Keeps every byte logged through it (clones share the buffer).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// What was logged, line by line.
    pub fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// "cannot reach the upstream", caused by an I/O error.
#[derive(Debug)]
pub struct Outer(pub std::io::Error);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot reach the upstream")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A span as the gate opened one per request before it had
/// `request_log`: named `request`, with `alice` recorded as the user.
pub fn request_span(path: &str, request_id: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = "GET",
        path,
        request_id,
        sub = tracing::field::Empty,
    );
    span.record("sub", "alice");
    span
}
