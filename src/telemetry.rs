//! Logging: tracing-subscriber filtered by `RUST_LOG` (default `info`), as
//! text or JSON (`CT_LOG_FORMAT`; [`text_format`], [`json_format`]).
//! Request lines carry method, path (no query), status, latency, the request
//! id and the user's `sub`; never a token or cookie ([`request_log`]).
//! Serving threads write their lines in batches ([`log_sink`]).

pub mod exporter;
pub mod json_format;
pub mod log_sink;
pub mod metrics;
pub mod request_id;
pub mod request_log;
pub mod text_format;

#[cfg(test)]
pub(crate) mod test_support;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's subscriber; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_writer(log_sink::Sink)
        .with_env_filter(filter)
        .fmt_fields(text_format::PlainFields);
    let (installed, format) = match format {
        LogFormat::Json => (
            builder.event_format(json_format::Json).try_init(),
            request_log::Format::Json,
        ),
        LogFormat::Text => (
            builder.event_format(text_format::Plain { ansi }).try_init(),
            request_log::Format::Text { ansi },
        ),
    };
    if installed.is_ok() {
        request_log::set_format(format);
    }
}
