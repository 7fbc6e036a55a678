//! What the log formatters' tests share: a writer that keeps what was
//! logged, and an error with a source.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::json_format::Json;
use super::text_format::{Plain, PlainFields};

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

/// Runs `f` with a subscriber at `filter` writing text (`json` false) or
/// JSON lines through the gate's formatters; returns the lines.
pub fn our_lines(json: bool, filter: &str, f: impl FnOnce()) -> Vec<String> {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_env_filter(EnvFilter::new(filter))
        .fmt_fields(PlainFields);
    if json {
        tracing::subscriber::with_default(builder.event_format(Json).finish(), f);
    } else {
        tracing::subscriber::with_default(builder.event_format(Plain::default()).finish(), f);
    }
    out.lines()
}

/// The same through tracing-subscriber's own formats, as the gate logged
/// before it had its own: plain text, or JSON with the current span.
pub fn their_lines(json: bool, f: impl FnOnce()) -> Vec<String> {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_max_level(Level::INFO)
        .with_target(false)
        .with_ansi(false);
    if json {
        let json = builder.json().with_current_span(true).with_span_list(false);
        tracing::subscriber::with_default(json.finish(), f);
    } else {
        tracing::subscriber::with_default(builder.finish(), f);
    }
    out.lines()
}
