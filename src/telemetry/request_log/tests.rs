use std::time::{Duration, UNIX_EPOCH};

use tracing::Level;

use super::*;
use crate::telemetry::test_support::Captured;
use crate::telemetry::text_format::{Plain, PlainFields};

const TS: usize = "2026-12-07T13:58:07.334585Z".len();

fn id(s: &'static str) -> RequestId {
    RequestId::Client(http::HeaderValue::from_static(s))
}

fn scope(path: &str, sub: Option<&str>) -> Scope {
    Scope {
        method: method_name(b"GET"),
        path: path.to_owned(),
        request_id: id("req-1"),
        sub: sub.map(str::to_owned),
        line: true,
    }
}

use crate::telemetry::test_support::{our_lines as ours, their_lines as theirs};

/// Lines logged inside a request: a string with escapes, numbers, a bool.
fn inner_lines() {
    tracing::warn!(error = %"upstream said \"no\"", attempts = 2u64, "upstream failed");
    tracing::info!(
        path = "/a\"b\\c\td\u{7f}é\u{200b}",
        delta = -3i64,
        fresh = true,
        "escapes"
    );
}

/// The old way: a `request` span around [`inner_lines`] and the request line.
fn with_a_span() {
    let span = crate::telemetry::test_support::request_span("/app/x\"y", "req-1");
    let _entered = span.enter();
    inner_lines();
    tracing::info!(status = 200u16, latency_us = 61u64, "request");
}

/// The new way: the same request's scope current around [`inner_lines`],
/// then its line.
fn with_a_scope(json: bool) -> Vec<String> {
    let mut request_line = String::new();
    let mut lines = ours(json, "info", || {
        let mut slot = Some(scope("/app/x\"y", None));
        {
            let _entered = Entered::enter(&mut slot);
            record_sub("alice");
            inner_lines();
        }
        assert!(with_current(|_| ()).is_none(), "the scope came back out");
        let scope = slot.take().unwrap();
        assert_eq!(scope.sub.as_deref(), Some("alice"), "with the sub");
        let format = if json {
            Format::Json
        } else {
            Format::Text { ansi: false }
        };
        write_line(
            &mut request_line,
            format,
            SystemTime::now(),
            &scope,
            200,
            61,
        )
        .unwrap();
    });
    lines.extend(lines_of(&request_line));
    lines
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn text_lines_in_and_of_a_request_are_those_a_request_span_gave() {
    let lines = with_a_scope(false);
    let reference = theirs(false, with_a_span);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines.len(), reference.len(), "{reference:#?}");
    for (a, b) in lines.iter().zip(&reference) {
        assert_eq!(a[TS..], b[TS..], "\nours:   {a}\ntheirs: {b}");
    }
    assert!(
        lines[2].ends_with(
            r#"  INFO request{method="GET" path="/app/x\"y" request_id="req-1" sub="alice"}: request status=200 latency_us=61"#
        ),
        "{lines:#?}"
    );
}

#[test]
fn json_lines_in_and_of_a_request_are_those_a_request_span_gave() {
    let lines = with_a_scope(true);
    let reference = theirs(true, with_a_span);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines.len(), reference.len(), "{reference:#?}");
    for (a, b) in lines.iter().zip(&reference) {
        // The same bytes after the timestamp's value, key order included.
        let at = "{\"timestamp\":\"".len() + TS;
        assert_eq!(a[at..], b[at..], "\nours:   {a}\ntheirs: {b}");
        let parsed: serde_json::Value = serde_json::from_str(a).unwrap();
        assert_eq!(parsed["span"]["sub"], "alice", "{a}");
    }
    let line: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["span"]["path"], "/app/x\"y");
}

#[test]
fn lines_outside_a_request_carry_no_context() {
    let text = ours(false, "info", || {
        tracing::info!(port = 1u64, "ssogate serving")
    });
    assert!(
        text[0].ends_with("  INFO ssogate serving port=1"),
        "{text:?}"
    );
    let json = ours(true, "info", || {
        tracing::info!(port = 1u64, "ssogate serving")
    });
    let v: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(v["fields"]["message"], "ssogate serving");
    assert_eq!(v["fields"]["port"], 1);
    assert!(v.get("span").is_none(), "{v}");
}

#[test]
fn json_errors_carry_their_sources_and_every_line_parses() {
    let failed = crate::telemetry::test_support::Outer(std::io::Error::other("refused"));
    let lines = ours(true, "info", || {
        let mut slot = Some(scope("/x", Some("bob")));
        let _entered = Entered::enter(&mut slot);
        tracing::warn!(
            error = &failed as &(dyn std::error::Error + 'static),
            r#type = 1u64,
            ratio = 0.5f64,
            odd = f64::NAN,
            "with sources"
        );
        tracing::error!(list = ?vec!["a\"b"], "debug values are strings");
    });
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let fields = &first["fields"];
    assert_eq!(fields["error"], "cannot reach the upstream");
    assert_eq!(fields["error.sources"], serde_json::json!(["refused"]));
    assert_eq!(fields["type"], 1);
    assert_eq!(fields["ratio"], 0.5);
    assert_eq!(fields["odd"], "NaN");
    assert_eq!(first["level"], "WARN");
    assert_eq!(first["span"]["sub"], "bob");
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["fields"]["list"], r#"["a\"b"]"#);
    assert_eq!(second["level"], "ERROR");
}

#[test]
fn json_strings_are_escaped_as_serde_json_escapes_them() {
    let mut every_byte = String::new();
    for c in (0u8..0x80).map(char::from) {
        every_byte.push(c);
    }
    for s in [
        "",
        "plain /path?x=1",
        "quote \" backslash \\ end",
        "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
        "é ✓ \u{200b} 😀",
        &every_byte,
    ] {
        let mut ours = String::new();
        write_json_str(&mut ours, s).unwrap();
        assert_eq!(ours, serde_json::to_string(s).unwrap(), "{s:?}");
    }
}

#[test]
fn request_lines_follow_rust_log_for_ssogate_request() {
    // (a scope is made, its line is written), and the other info line's count.
    let seen = |filter: &str| {
        let mut scope = None;
        let out = ours(false, filter, || {
            scope = Scope::start(b"GET", "/x", &id("a")).map(|s| s.line);
            tracing::info!("other line");
        });
        (scope, out.len())
    };
    assert_eq!(seen("info"), (Some(true), 1));
    assert_eq!(seen("warn"), (None, 0), "no scope when nothing is at info");
    assert_eq!(
        seen("info,ssogate::request=warn"),
        (Some(false), 1),
        "request lines off; other info lines and the context kept"
    );
    assert_eq!(seen("warn,ssogate::request=info"), (Some(true), 0));
    assert!(
        Scope::start(b"GET", "/x", &id("a")).is_none(),
        "no subscriber: no request lines"
    );
}

#[test]
fn a_filtered_out_request_line_is_not_written() {
    let mut quiet = scope("/q", None);
    quiet.line = false;
    // `finish` puts a line together in `LINE` before it writes it to the
    // log sink: left as it was, nothing was written.
    LINE.with_borrow_mut(|line| {
        line.clear();
        line.push_str("untouched");
    });
    finish(&quiet, 200, 1);
    LINE.with_borrow(|line| assert_eq!(line, "untouched"));
    quiet.line = true;
    finish(&quiet, 200, 1);
    LINE.with_borrow(|line| assert!(line.contains("request status=200"), "{line}"));
}

#[test]
fn methods_are_named_without_allocating_when_standard() {
    assert!(matches!(method_name(b"GET"), Cow::Borrowed("GET")));
    assert!(matches!(method_name(b"PATCH"), Cow::Borrowed("PATCH")));
    assert_eq!(method_name(b"PROPFIND"), "PROPFIND");
    assert_eq!(method_name(b"\xffX"), "\u{fffd}X");
}

#[tokio::test(flavor = "current_thread")]
async fn interleaved_requests_on_one_thread_each_log_their_own_context() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(Level::INFO)
        .fmt_fields(PlainFields)
        .event_format(Plain::default())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let request = |path: &'static str, sub: &'static str| async move {
        let mut slot = Scope::start(b"GET", path, &id("r"));
        assert!(slot.is_some());
        InScope::new(
            async move {
                record_sub(sub);
                for round in 0..3u64 {
                    tokio::task::yield_now().await;
                    tracing::info!(round, "step");
                }
            },
            &mut slot,
        )
        .await;
        slot
    };
    let (a, b) = tokio::join!(request("/a", "alice"), request("/b", "bob"));
    assert_eq!(a.unwrap().sub.as_deref(), Some("alice"));
    assert_eq!(b.unwrap().sub.as_deref(), Some("bob"));
    assert!(with_current(|_| ()).is_none(), "nothing left current");
    let lines = captured.lines();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    for line in &lines {
        let a = line.contains(r#"path="/a" request_id="r" sub="alice"}: step"#);
        let b = line.contains(r#"path="/b" request_id="r" sub="bob"}: step"#);
        assert!(a ^ b, "{line}");
    }
    assert_eq!(lines.iter().filter(|l| l.contains("alice")).count(), 3);
}

#[test]
fn a_panicking_request_leaves_no_scope_behind() {
    let mut slot = Some(scope("/p", None));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fut = InScope::new(async { panic!("handler panicked") }, &mut slot);
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let _ = fut.as_mut().poll(&mut Context::from_waker(waker));
    }));
    assert!(caught.is_err());
    assert!(with_current(|_| ()).is_none(), "the scope was taken back");
    assert!(slot.is_some(), "and returned to its owner");
}

#[test]
fn text_lines_colour_only_the_level_for_a_terminal() {
    let mut line = String::new();
    let at = UNIX_EPOCH + Duration::from_micros(1_796_648_287_004_205);
    write_line(
        &mut line,
        Format::Text { ansi: true },
        at,
        &scope("/t", None),
        404,
        7,
    )
    .unwrap();
    assert_eq!(
        line,
        "2026-12-07T12:58:07.004205Z \u{1b}[32m INFO\u{1b}[0m request{method=\"GET\" path=\"/t\" request_id=\"req-1\"}: request status=404 latency_us=7\n"
    );
}

proptest::proptest! {
    /// Whatever a client puts in its path, method or request id and a
    /// provider in `sub`: the JSON line is one object that reads back to
    /// exactly those values, and the text line is one line (no forged
    /// second line in the log).
    #[test]
    fn any_request_is_one_line_that_reads_back(
        path in "\\PC*|[\\x00-\\x7f]*",
        method in "[!-~]{1,12}|\\PC{1,4}",
        sub in proptest::option::of("\\PC*|[\\x00-\\x7f]*"),
        status in 100u16..1000,
        latency_us in proptest::num::u64::ANY,
    ) {
        let scope = Scope {
            method: method_name(method.as_bytes()),
            path: path.clone(),
            request_id: RequestId::Made(*b"0123456789abcdef0123456789abcdef"),
            sub: sub.clone(),
            line: true,
        };
        let mut json = String::new();
        write_line(&mut json, Format::Json, SystemTime::now(), &scope, status, latency_us).unwrap();
        proptest::prop_assert!(json.ends_with('\n'));
        proptest::prop_assert_eq!(json.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        proptest::prop_assert_eq!(v["span"]["path"].as_str(), Some(path.as_str()));
        proptest::prop_assert_eq!(v["span"]["method"].as_str(), Some(method.as_str()));
        proptest::prop_assert_eq!(v["span"]["sub"].as_str(), sub.as_deref());
        proptest::prop_assert_eq!(v["fields"]["status"].as_u64(), Some(u64::from(status)));
        proptest::prop_assert_eq!(v["fields"]["latency_us"].as_u64(), Some(latency_us));

        let mut text = String::new();
        write_line(&mut text, Format::Text { ansi: false }, SystemTime::now(), &scope, status, latency_us).unwrap();
        proptest::prop_assert_eq!(text.matches(['\n', '\r']).count(), 1, "{}", text);
        let quoted = format!("path={:?}", path);
        proptest::prop_assert!(text.contains(&quoted), "{}", text);
    }
}

#[test]
fn records_of_the_log_crate_are_written_without_their_metadata_fields() {
    // What tracing-log makes of a `log` record: its metadata as fields.
    let from_log = || {
        tracing::info!(
            log.target = "rustls::conn",
            log.module_path = "rustls::conn",
            log.file = "src/conn.rs",
            log.line = 10u64,
            "from the log crate"
        );
    };
    let text = ours(false, "info", from_log);
    assert!(text[0].ends_with("  INFO from the log crate"), "{text:?}");
    let json = ours(true, "info", from_log);
    let v: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(
        v["fields"],
        serde_json::json!({"message": "from the log crate"}),
        "{v}"
    );
    assert_eq!(theirs(false, from_log)[0][TS..], text[0][TS..]);
}
