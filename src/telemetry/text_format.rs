//! The text log line (`CT_LOG_FORMAT=text`): the same line tracing-subscriber's
//! default format writes without colours and targets —
//! `2026-12-07T13:58:07.334585Z  INFO request{method="GET"}: request status=200`
//! — at a fraction of its cost. The default format styles every part, each
//! field name included, through `nu_ansi_term` even when colours are off,
//! and formats the whole timestamp for every line; here nothing is styled
//! ([`PlainFields`] for the fields of spans and events, [`Plain`] for the
//! line), and only the microseconds of the timestamp are written each time
//! (its text up to the second is kept per thread). For a person at a
//! terminal the level is coloured, nothing else. A line logged while a
//! request is handled carries the request's context
//! ([`super::request_log`]) where a span's would be.

use std::cell::Cell;
use std::fmt;

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::request_log;

/// The plain text line; with `ansi`, the level is coloured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain {
    pub ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        timestamp(&mut writer, SystemTime::now())?;
        writer.write_char(' ')?;
        write_level(&mut writer, *event.metadata().level(), self.ansi)?;
        writer.write_char(' ')?;
        let in_request = request_log::with_current(|r| r.write_text(&mut writer)).transpose()?;
        let spans = ctx.event_scope();
        if in_request.is_some() && spans.is_none() {
            writer.write_char(' ')?;
        }
        if let Some(scope) = spans {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Fields as the default format writes them without colours: the message
/// first, then `name=value` (values as `Debug`), separated by spaces.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Fields {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Fields<'w> {
    writer: Writer<'w>,
    empty: bool,
    result: fmt::Result,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if is_plain(value) {
            self.record_debug(field, &format_args!("\"{value}\""));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self.record_debug(
                field,
                &format_args!("{value} {}.sources={}", field.name(), Sources(source)),
            ),
            None => self.record_debug(field, &format_args!("{value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || is_log_metadata(field) {
            return;
        }
        if self.empty {
            self.empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
        let name = field.name();
        self.result = self.result.and_then(|()| match name {
            "message" => write!(self.writer, "{value:?}"),
            name => write!(
                self.writer,
                "{}={value:?}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        });
    }
}

/// An error's sources, `[first, second]`.
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&format_args!("{error}"));
            next = error.source();
        }
        list.finish()
    }
}

/// A record of the `log` crate comes as an event with its metadata in
/// `log.target`, `log.module_path`, `log.file` and `log.line` fields; like
/// tracing-subscriber's own formats, the lines leave them out.
pub(crate) fn is_log_metadata(field: &Field) -> bool {
    field.name().starts_with("log.")
}

/// Printable ASCII without `"` or `\\`: what `Debug` writes quoted but
/// otherwise as it is, so it can be written without its per-character
/// escaping.
fn is_plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Writes a string field's value as the default format does: `Debug`,
/// quoted and escaped.
pub(crate) fn write_str_value(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if is_plain(value) {
        w.write_char('"')?;
        w.write_str(value)?;
        w.write_char('"')
    } else {
        write!(w, "{value:?}")
    }
}

/// Writes the level, five wide and right-aligned (`" INFO"`); with `ansi`,
/// in the default format's colour for it.
pub(crate) fn write_level(w: &mut impl fmt::Write, level: Level, ansi: bool) -> fmt::Result {
    let (name, colour) = match level {
        Level::TRACE => ("TRACE", "35"),
        Level::DEBUG => ("DEBUG", "34"),
        Level::INFO => (" INFO", "32"),
        Level::WARN => (" WARN", "33"),
        Level::ERROR => ("ERROR", "31"),
    };
    if ansi {
        write!(w, "\x1b[{colour}m{name}\x1b[0m")
    } else {
        w.write_str(name)
    }
}

thread_local! {
    /// `YYYY-MM-DDTHH:MM:SS.` of the second last written, and that second.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `2026-12-07T13:58:07.334585Z` (RFC 3339, UTC, microseconds).
pub(crate) fn timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let text = humantime::format_rfc3339_seconds(whole).to_string();
        // `2026-12-07T13:58:07Z`: all but the `Z`, then the dot.
        let Some(head) = text.as_bytes().get(..19) else {
            return write!(w, "{}", humantime::format_rfc3339_micros(now));
        };
        prefix[..19].copy_from_slice(head);
        prefix[19] = b'.';
        SECOND.set((secs, prefix));
    }
    let mut micros = [b'0'; 7];
    let mut n = since.subsec_micros();
    for digit in micros[..6].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    micros[6] = b'Z';
    // Both are ASCII.
    w.write_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?)?;
    w.write_str(std::str::from_utf8(&micros).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_support::{Outer, our_lines, request_span, their_lines};

    /// A request's span and lines of every level, as the gate logs them.
    fn log_some() {
        tracing::info!(addr = "127.0.0.1:1", tls = false, "ssogate serving");
        let span = request_span("/app/x", "abc");
        let _entered = span.enter();
        tracing::warn!(error = %"upstream said \"no\"", "upstream failed");
        tracing::info!(
            path = "/a\"b\\c\td\u{7f}é\u{200b}",
            plain = "/ok path",
            "escapes"
        );
        let failed = Outer(std::io::Error::other("refused"));
        tracing::warn!(
            error = &failed as &(dyn std::error::Error + 'static),
            r#type = 1,
            "with sources"
        );
        tracing::info!(status = 200u16, latency_us = 123u64, "request");
        let inner = tracing::info_span!("refresh");
        let _inner = inner.enter();
        tracing::error!("a line in two spans");
        tracing::debug!("not shown at info");
    }

    fn lines(with_plain: bool) -> Vec<String> {
        if with_plain {
            our_lines(false, "info", log_some)
        } else {
            their_lines(false, log_some)
        }
    }

    #[test]
    fn lines_are_those_of_the_default_format_without_colours() {
        let ours = lines(true);
        let default = lines(false);
        assert_eq!(ours.len(), 6, "{ours:#?}");
        assert_eq!(ours.len(), default.len(), "{default:#?}");
        for (a, b) in ours.iter().zip(&default) {
            // The timestamps differ by the time between the two runs.
            assert_eq!(a[27..], b[27..], "\nours:    {a}\ndefault: {b}");
            assert_eq!(a.len(), b.len());
        }
        assert!(
            ours[3].contains("error=cannot reach the upstream error.sources=[refused] type=1"),
            "{ours:#?}"
        );
        assert!(ours[4].contains("  INFO request{"), "{ours:#?}");
        assert!(
            ours[4].ends_with("}: request status=200 latency_us=123"),
            "{ours:#?}"
        );
        assert!(ours[5].contains(" ERROR request{"), "{ours:#?}");
        assert!(
            ours[5].contains("}:refresh: a line in two spans"),
            "{ours:#?}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_microseconds_in_utc() {
        let mut text = String::new();
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_796_648_287_004_205);
        timestamp(&mut Writer::new(&mut text), at).unwrap();
        assert_eq!(text, humantime::format_rfc3339_micros(at).to_string());
        // The same second again (cached), and the next.
        let mut again = String::new();
        let later = at + std::time::Duration::from_micros(990_000);
        timestamp(&mut Writer::new(&mut again), later).unwrap();
        assert_eq!(again, humantime::format_rfc3339_micros(later).to_string());
        assert_eq!(text.len(), "2026-12-07T13:58:07.334585Z".len());
    }
}
