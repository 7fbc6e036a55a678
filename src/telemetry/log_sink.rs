//! Where log lines go: standard output, written by each serving thread in
//! batches rather than a line at a time.
//!
//! At `RUST_LOG=info` (the default) the gate logs a line per request. Written
//! one by one, each line is a `write` system call under the process-wide
//! stdout lock, shared by the serving threads: a fifth of a proxied
//! request's cost on a loaded gate. A serving thread instead gathers its
//! lines ([`gather_on_this_thread`]) and writes them in one call when its
//! runtime runs out of work and is about to wait ([`flush`], the runtime's
//! park hook), or once [`FLUSH_AT`] bytes are waiting. Lines so reach the
//! log at most one busy stretch of that thread later (typically well under
//! a millisecond). Warnings and errors are written at once, after the lines
//! gathered before them, so the order within a thread holds and nothing
//! that matters waits. Lines of different threads interleave whole, as
//! before. Every other thread (start-up, blocking tasks, tests) writes each
//! line at once, as before; at exit the binary flushes its own thread, and
//! a serving thread flushes its lines before it tells the main thread it
//! has ended (so they are out before the process exits).
//!
//! What a crash can lose: the info lines a thread gathered since it last
//! ran out of work. A panic's message goes to standard error directly.

use std::cell::RefCell;
use std::io::{self, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Write what a thread gathered once it is this much, even while busy.
pub const FLUSH_AT: usize = 32 * 1024;

thread_local! {
    static GATHERED: Gathered = const { Gathered(RefCell::new(None)) };
}

/// A thread's gathered lines: `None` on threads that write at once.
struct Gathered(RefCell<Option<Vec<u8>>>);

impl Drop for Gathered {
    fn drop(&mut self) {
        if let Some(lines) = self.0.get_mut() {
            write_out(lines);
        }
    }
}

/// Whether gathering is worth it: info lines can be logged (the installed
/// subscriber's level, `RUST_LOG`). At `warn` every line is written at once
/// anyway, and serving threads need no hook when they run out of work.
pub fn wanted() -> bool {
    tracing::level_filters::LevelFilter::current() >= tracing::level_filters::LevelFilter::INFO
}

/// Makes this thread gather its log lines until [`flush`], when that is
/// [`wanted`].
pub fn gather_on_this_thread() {
    if !wanted() {
        return;
    }
    GATHERED.with(|g| {
        if let Ok(mut g) = g.0.try_borrow_mut() {
            g.get_or_insert_with(|| Vec::with_capacity(FLUSH_AT));
        }
    });
}

/// Writes what this thread has gathered.
pub fn flush() {
    // `try_with`: a runtime may park while the thread is being torn down.
    let _ = GATHERED.try_with(|g| {
        if let Ok(mut g) = g.0.try_borrow_mut()
            && let Some(lines) = g.as_mut()
        {
            write_out(lines);
        }
    });
}

/// Writes `lines` to standard output and empties it. A failed write is
/// dropped: there is nowhere left to report it.
fn write_out(lines: &mut Vec<u8>) {
    if lines.is_empty() {
        return;
    }
    let mut out = io::stdout().lock();
    let _ = out.write_all(lines).and_then(|()| out.flush());
    lines.clear();
}

/// Writes an info line made outside tracing (the request log's), gathered
/// as the fmt layer's info lines are.
pub fn write_info(line: &[u8]) {
    let _ = Line { urgent: false }.write_all(line);
}

/// The fmt layer's writer factory (`tracing_subscriber::fmt().with_writer`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sink;

/// One event's line, as the fmt layer writes it.
pub struct Line {
    /// A warning or an error: written at once.
    urgent: bool,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let gathered = GATHERED
            .try_with(|g| {
                let Ok(mut g) = g.0.try_borrow_mut() else {
                    return false;
                };
                let Some(lines) = g.as_mut() else {
                    return false;
                };
                lines.extend_from_slice(buf);
                if self.urgent || lines.len() >= FLUSH_AT {
                    write_out(lines);
                }
                true
            })
            .unwrap_or(false);
        if gathered {
            return Ok(buf.len());
        }
        io::stdout().lock().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered() -> String {
        GATHERED.with(|g| String::from_utf8(g.0.borrow().clone().unwrap_or_default()).unwrap())
    }

    #[test]
    fn a_gathering_thread_keeps_info_lines_until_it_flushes_and_writes_warnings_at_once() {
        std::thread::spawn(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(Sink)
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                assert!(wanted(), "info lines can be logged");
                gather_on_this_thread();
                tracing::info!("line one");
                tracing::info!("line two");
                let g = gathered();
                assert!(
                    g.contains("line one") && g.find("line one") < g.find("line two"),
                    "info lines wait, in order: {g}"
                );
                tracing::warn!("line three");
                assert_eq!(gathered(), "", "a warning writes what waited, then itself");
                tracing::info!("line four");
                assert!(gathered().contains("line four"));
                flush();
                assert_eq!(gathered(), "");
                tracing::info!(big = "x".repeat(FLUSH_AT), "line five");
                assert_eq!(gathered(), "", "written once FLUSH_AT bytes wait");
            });
        })
        .join()
        .unwrap();
        let subscriber = tracing_subscriber::fmt().with_writer(Sink).finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!("line six"));
        assert!(
            GATHERED.with(|g| g.0.borrow().is_none()),
            "a thread not asked to gather writes at once and keeps nothing"
        );
    }
}
