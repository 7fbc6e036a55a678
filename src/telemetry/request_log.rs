//! The request log: the line each request leaves (method, path without the
//! query, request id, the user's `sub`, status, latency), and the request's
//! context on every other line logged while it is handled.
//!
//! The lines are the ones a tracing span named `request` gave — text
//! `… INFO request{method="GET" path="/x" request_id="…" sub="…"}: request
//! status=200 latency_us=61`, JSON `{"timestamp":…,"level":"INFO","fields":
//! {"message":"request","status":200,"latency_us":61},"span":{"method":…,
//! "name":"request"}}` — but there is no span any more. Counted by callgrind
//! (`benches/load/instructions.sh`), the span and its event cost about
//! 12 000 instructions a proxied request, 60 % on top of the request itself:
//! the span registry, a `String` and a type map for the span's formatted
//! fields, enter and exit through the dispatcher on every poll, the event's
//! dispatch. Here the context is a plain value ([`Scope`]) moved into a
//! thread-local while the request's future is polled ([`InScope`]), the
//! formatters of other lines read it (`text_format`, `json_format`), and the
//! request line is written straight to the log sink.
//!
//! Whether request lines are logged follows `RUST_LOG` for the target
//! `ssogate::request` at `info` (so `RUST_LOG=info,ssogate::request=warn`
//! keeps every other line and drops these). The context is kept whenever
//! any info line can be logged, request lines or not, so that a warning
//! still names its request. With nothing at `info` (`RUST_LOG=warn`, the
//! benchmarks' level) no scope is made and a request costs nothing here;
//! warnings then carry no context, as a disabled span gave none.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::SystemTime;

use super::log_sink;
use super::request_id::RequestId;
use super::text_format;

/// The target request lines are filtered by (`RUST_LOG`).
pub const TARGET: &str = "ssogate::request";

/// How lines are written, as `telemetry::init` chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text { ansi: bool },
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Sets the line format (once; `telemetry::init`).
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

fn format() -> Format {
    FORMAT
        .get()
        .copied()
        .unwrap_or(Format::Text { ansi: false })
}

/// Whether request lines are logged (the installed subscriber and
/// `RUST_LOG`); cheap: the answer is cached per call site.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What a request's lines say about it.
#[derive(Clone, Debug)]
pub struct Scope {
    method: Cow<'static, str>,
    path: String,
    request_id: RequestId,
    sub: Option<String>,
    /// Whether the request's own line is written ([`enabled`]).
    line: bool,
}

impl Scope {
    /// The scope of a request, or `None` when no info line can be logged.
    pub fn start(method: &[u8], path: &str, request_id: &RequestId) -> Option<Scope> {
        let line = enabled();
        if !line && !tracing::enabled!(target: "ssogate", tracing::Level::INFO) {
            return None;
        }
        Some(Scope {
            method: method_name(method),
            path: path.to_owned(),
            request_id: request_id.clone(),
            sub: None,
            line,
        })
    }

    /// Writes `request{method="GET" path="/x" request_id="…" sub="…"}:`.
    pub(crate) fn write_text(&self, w: &mut impl fmt::Write) -> fmt::Result {
        w.write_str("request{method=")?;
        text_format::write_str_value(w, &self.method)?;
        w.write_str(" path=")?;
        text_format::write_str_value(w, &self.path)?;
        w.write_str(" request_id=")?;
        text_format::write_str_value(w, self.request_id.as_str())?;
        if let Some(sub) = &self.sub {
            w.write_str(" sub=")?;
            text_format::write_str_value(w, sub)?;
        }
        w.write_str("}:")
    }

    /// Writes `"span":{"method":"GET",…,"name":"request"}`.
    pub(crate) fn write_json(&self, w: &mut impl fmt::Write) -> fmt::Result {
        w.write_str("\"span\":{\"method\":")?;
        write_json_str(w, &self.method)?;
        w.write_str(",\"path\":")?;
        write_json_str(w, &self.path)?;
        w.write_str(",\"request_id\":")?;
        write_json_str(w, self.request_id.as_str())?;
        if let Some(sub) = &self.sub {
            w.write_str(",\"sub\":")?;
            write_json_str(w, sub)?;
        }
        w.write_str(",\"name\":\"request\"}")
    }
}

/// The method's name: the standard ones without an allocation.
fn method_name(method: &[u8]) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().find(|m| m.as_bytes() == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(String::from_utf8_lossy(method).into_owned()),
    }
}

thread_local! {
    /// The scope of the request whose future this thread is polling.
    static CURRENT: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` on the scope of the request being polled on this thread, if any.
pub(crate) fn with_current<R>(f: impl FnOnce(&Scope) -> R) -> Option<R> {
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|s| s.as_ref().map(f)))
        .ok()
        .flatten()
}

/// Names the signed-in user in the current request's lines (a no-op when
/// request lines are not logged).
pub fn record_sub(sub: &str) {
    let _ = CURRENT.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut()
            && let Some(scope) = c.as_mut()
        {
            scope.sub = Some(sub.to_owned());
        }
    });
}

pin_project_lite::pin_project! {
    /// A request's future with its [`Scope`] current on this thread while
    /// it is polled, as `Instrument` makes a span current.
    pub struct InScope<'a, F> {
        #[pin]
        inner: F,
        scope: &'a mut Option<Scope>,
    }
}

impl<'a, F> InScope<'a, F> {
    /// `scope` is current while `inner` is polled, and comes back to the
    /// caller (with what was recorded) between polls and afterwards.
    pub fn new(inner: F, scope: &'a mut Option<Scope>) -> Self {
        InScope { inner, scope }
    }
}

impl<F: Future> Future for InScope<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let entered = Entered::enter(this.scope);
        let polled = this.inner.poll(cx);
        drop(entered);
        polled
    }
}

/// Swaps a scope into [`CURRENT`], and back out when dropped (a panic
/// included). Swapping keeps an outer scope, should one be current.
struct Entered<'s>(&'s mut Option<Scope>);

impl<'s> Entered<'s> {
    fn enter(slot: &'s mut Option<Scope>) -> Self {
        swap(slot);
        Entered(slot)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        swap(self.0);
    }
}

fn swap(slot: &mut Option<Scope>) {
    let _ = CURRENT.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            std::mem::swap(&mut *c, slot);
        }
    });
}

thread_local! {
    /// Where a request line is put together before it is written.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// Writes the request's line: `INFO`, its scope, `request status=…
/// latency_us=…` (unless request lines are filtered out).
pub fn finish(scope: &Scope, status: u16, latency_us: u64) {
    if !scope.line {
        return;
    }
    let _ = LINE.try_with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        if write_line(
            &mut *line,
            format(),
            SystemTime::now(),
            scope,
            status,
            latency_us,
        )
        .is_ok()
        {
            log_sink::write_info(line.as_bytes());
        }
    });
}

fn write_line(
    w: &mut impl fmt::Write,
    format: Format,
    now: SystemTime,
    scope: &Scope,
    status: u16,
    latency_us: u64,
) -> fmt::Result {
    match format {
        Format::Text { ansi } => {
            text_format::timestamp(w, now)?;
            w.write_char(' ')?;
            text_format::write_level(w, tracing::Level::INFO, ansi)?;
            w.write_char(' ')?;
            scope.write_text(w)?;
            writeln!(w, " request status={status} latency_us={latency_us}")
        }
        Format::Json => {
            w.write_str("{\"timestamp\":\"")?;
            text_format::timestamp(w, now)?;
            write!(
                w,
                "\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"status\":{status},\"latency_us\":{latency_us}}},"
            )?;
            scope.write_json(w)?;
            w.write_str("}\n")
        }
    }
}

/// Writes `s` as a JSON string, escaped as `serde_json` escapes it.
pub(crate) fn write_json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..0x20 => "",
            _ => continue,
        };
        w.write_str(&s[plain..i])?;
        if escaped.is_empty() {
            write!(w, "\\u{b:04x}")?;
        } else {
            w.write_str(escaped)?;
        }
        plain = i + 1;
    }
    w.write_str(&s[plain..])?;
    w.write_char('"')
}

#[cfg(test)]
mod tests;
