//! Logging: tracing-subscriber filtered by `RUST_LOG` (default `info`), as
//! text or JSON (`CT_LOG_FORMAT`). Request lines carry method, path (no
//! query), status, latency, the request id and the user's `sub`; never a
//! token or cookie. Serving threads write their lines in batches
//! ([`log_sink`]).

pub mod exporter;
pub mod log_sink;
pub mod metrics;
pub mod request_id;
pub mod text_format;

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
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text if !ansi => builder
            .fmt_fields(text_format::PlainFields)
            .event_format(text_format::Plain)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
