//! The JSON log line (`CT_LOG_FORMAT=json`), one object a line, in the shape
//! tracing-subscriber's JSON format gives with the current span:
//! `{"timestamp":"…","level":"WARN","fields":{"message":"…","error":"…"},
//! "span":{"method":"GET","path":"/x","request_id":"…","name":"request"}}`.
//! Its own formatter because the request's context is not a tracing span
//! (see [`super::request_log`]): `"span"` is the request being handled on
//! this thread, left out outside a request. The gate opens no tracing spans;
//! one that a library opens is not written.
//!
//! Field values: numbers and booleans as JSON numbers and booleans, strings
//! as strings, anything else as the string of its `Debug` form, an error as
//! its message with its sources under `<field>.sources`, as in text lines.
//! (Tested with the request log: `request_log/tests.rs`.)

use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::request_log::{self, write_json_str};
use super::text_format;

/// The JSON line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        text_format::timestamp(&mut writer, SystemTime::now())?;
        write!(
            writer,
            "\",\"level\":\"{}\",\"fields\":{{",
            event.metadata().level()
        )?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('}')?;
        if let Some(result) = request_log::with_current(|r| {
            writer.write_char(',')?;
            r.write_json(&mut writer)
        }) {
            result?;
        }
        writer.write_str("}\n")
    }
}

/// An event's fields as the members of a JSON object.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes `"name":` and then the value `write` writes.
    fn member(&mut self, field: &Field, write: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() || text_format::is_log_metadata(field) {
            return;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let first = std::mem::replace(&mut self.first, false);
        self.result = (|| {
            if !first {
                self.writer.write_char(',')?;
            }
            write_json_str(self.writer, name)?;
            self.writer.write_char(':')?;
            write(self.writer)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_json_str(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those become strings.
        if value.is_finite() {
            self.member(field, |w| write!(w, "{value}"));
        } else {
            self.member(field, |w| write_json_str(w, &value.to_string()));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if text_format::is_log_metadata(field) {
            return;
        }
        self.member(field, |w| write_json_str(w, &value.to_string()));
        if let Some(source) = value.source() {
            if self.result.is_err() {
                return;
            }
            let name = field.name();
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = (|| {
                self.writer.write_char(',')?;
                write_json_str(self.writer, &format!("{name}.sources"))?;
                self.writer.write_str(":[")?;
                write_json_str(self.writer, &source.to_string())?;
                let mut next = source.source();
                while let Some(error) = next {
                    self.writer.write_char(',')?;
                    write_json_str(self.writer, &error.to_string())?;
                    next = error.source();
                }
                self.writer.write_char(']')
            })();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| write_json_str(w, &format!("{value:?}")));
    }
}
