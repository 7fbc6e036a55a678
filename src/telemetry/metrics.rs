//! Prometheus metrics, injected: one [`Metrics`] per gate (no global
//! recorder), every series registered at start so the hot path only bumps
//! an atomic. The per-request series are counted per serving thread
//! ([`per_thread`]), the rest in the exporter's registry. Rendered in the
//! text format by [`Metrics::render`] for the listener on `CT_METRICS_ADDR`.
//!
//! | series | labels |
//! |---|---|
//! | `ssogate_requests_total` | `outcome`: forwarded, sign_in (302 to sign in), rejected (4xx by the gate), error (5xx by the gate), sso (the gate's own routes) |
//! | `ssogate_gate_duration_seconds` | time spent in the gate itself, the upstream's time taken out |
//! | `ssogate_upstream_duration_seconds` | from forwarding until the upstream's response head |
//! | `ssogate_upstream_errors_total` | upstream unreachable or failed |
//! | `ssogate_sign_ins_total`, `ssogate_sign_in_failures_total` | `reason` of a failure |
//! | `ssogate_refreshes_total`, `ssogate_refresh_failures_total` | `reason`: rejected, unavailable |
//! | `ssogate_sessions_ended_total` | `cause`: sign_out, backchannel, refresh_refused, expired, max_age |
//! | `ssogate_websockets_open` | gauge |
//! | `ssogate_jwks_fetches_total` | key sets fetched from providers |
//! | `ssogate_upstream_connections_opened_total` | `protocol`: http1, http2 |
//! | `ssogate_build_info` | `version`; always 1 |

mod per_thread;

use std::time::Duration;

use crate::server::Handover;
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Latency buckets, in seconds (100 µs to 10 s).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// `Outcome`'s label values, in its order.
const OUTCOMES: [&str; 5] = ["forwarded", "sign_in", "rejected", "error", "sso"];

/// What became of one request, for `ssogate_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    SignIn,
    Rejected,
    Error,
    Sso,
}

/// Why a sign-in failed, for `ssogate_sign_in_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignInFailure {
    /// Missing, unknown, replayed or expired sign-in state.
    State,
    /// The provider sent `error=` (the user cancelled, policy refused, …).
    ProviderRefused,
    /// The code was spent or expired (`invalid_grant`).
    InvalidGrant,
    /// The ID token (or userinfo) failed validation.
    InvalidToken,
    /// The provider could not be reached or is not loaded.
    Unreachable,
    /// The provider answered something unusable.
    BadResponse,
    /// The gate could not store the session, or is misconfigured.
    Internal,
}

/// Why a session ended, for `ssogate_sessions_ended_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    SignOut,
    Backchannel,
    RefreshRefused,
    /// A live connection's session ran out without a refresh.
    Expired,
    MaxAge,
}

pub struct Metrics {
    handle: PrometheusHandle,
    /// `ssogate_requests_total` and the two duration histograms.
    requests: per_thread::PerThread,
    pub upstream_errors: Counter,
    pub sign_ins: Counter,
    sign_in_failures: [Counter; 7],
    pub refreshes: Counter,
    pub refresh_rejected: Counter,
    pub refresh_unavailable: Counter,
    ended: [Counter; 5],
    pub websockets_open: Gauge,
    pub jwks_fetches: Counter,
    handovers: [Counter; Handover::ALL.len()],
    /// Upstream connections opened, over HTTP/1.1 and over HTTP/2.
    pub upstream_opened: crate::proxy::pool::Opened,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let r = Registrar(&recorder);
        let sign_in_failures = [
            "state",
            "provider_refused",
            "invalid_grant",
            "invalid_token",
            "unreachable",
            "bad_response",
            "internal",
        ]
        .map(|reason| r.counter("ssogate_sign_in_failures_total", &[("reason", reason)]));
        let ended = [
            "sign_out",
            "backchannel",
            "refresh_refused",
            "expired",
            "max_age",
        ]
        .map(|cause| r.counter("ssogate_sessions_ended_total", &[("cause", cause)]));
        r.gauge(
            "ssogate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
        let websockets_open = r.gauge("ssogate_websockets_open", &[]);
        websockets_open.set(0.0);
        let metrics = Metrics {
            requests: per_thread::PerThread::default(),
            upstream_errors: r.counter("ssogate_upstream_errors_total", &[]),
            sign_ins: r.counter("ssogate_sign_ins_total", &[]),
            sign_in_failures,
            refreshes: r.counter("ssogate_refreshes_total", &[]),
            refresh_rejected: r
                .counter("ssogate_refresh_failures_total", &[("reason", "rejected")]),
            refresh_unavailable: r.counter(
                "ssogate_refresh_failures_total",
                &[("reason", "unavailable")],
            ),
            ended,
            websockets_open,
            jwks_fetches: r.counter("ssogate_jwks_fetches_total", &[]),
            handovers: Handover::ALL
                .map(|why| r.counter("ssogate_http1_handovers_total", &[("reason", why.as_str())])),
            upstream_opened: crate::proxy::pool::Opened {
                http1: r.counter(
                    "ssogate_upstream_connections_opened_total",
                    &[("protocol", "http1")],
                ),
                http2: r.counter(
                    "ssogate_upstream_connections_opened_total",
                    &[("protocol", "http2")],
                ),
            },
            handle: recorder.handle(),
        };
        // Every counter shows from the first scrape, at 0.
        for c in metrics
            .sign_in_failures
            .iter()
            .chain(&metrics.ended)
            .chain(&metrics.handovers)
            .chain([
                &metrics.upstream_opened.http1,
                &metrics.upstream_opened.http2,
            ])
        {
            c.increment(0);
        }
        metrics
    }

    pub fn request(&self, outcome: Outcome, gate: Duration, upstream: Option<Duration>) {
        self.requests.record(outcome as usize, gate, upstream);
    }

    pub fn sign_in_failed(&self, why: SignInFailure) {
        self.sign_in_failures[why as usize].increment(1);
    }

    pub fn session_ended(&self, cause: Ended) {
        self.ended[cause as usize].increment(1);
    }

    /// A client connection left the own HTTP/1.1 path for hyper.
    pub fn handed_over(&self, why: Handover) {
        self.handovers[why as usize].increment(1);
    }

    /// The text exposition format; also folds recorded samples into the histograms.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.requests.render(&mut text);
        text
    }

    /// Drains recorded samples into the histograms (call every few seconds
    /// so memory stays bounded between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

struct Registrar<'a>(&'a PrometheusRecorder);

const META: Metadata<'static> = Metadata::new("ssogate", Level::INFO, Some("ssogate"));

impl Registrar<'_> {
    fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, *v))
                .collect::<Vec<_>>(),
        )
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.0.register_counter(&Self::key(name, labels), &META)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.0.register_gauge(&Self::key(name, labels), &META)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_the_text_format_and_move() {
        let m = Metrics::new();
        let before = m.render();
        assert!(
            before.contains("ssogate_requests_total{outcome=\"forwarded\"} 0"),
            "{before}"
        );
        assert!(before.contains("ssogate_build_info{version=\""), "{before}");
        m.request(
            Outcome::Forwarded,
            Duration::from_micros(80),
            Some(Duration::from_millis(3)),
        );
        m.request(Outcome::SignIn, Duration::from_micros(20), None);
        m.sign_in_failed(SignInFailure::InvalidToken);
        m.session_ended(Ended::Backchannel);
        m.websockets_open.increment(1.0);
        let after = m.render();
        for want in [
            "ssogate_requests_total{outcome=\"forwarded\"} 1",
            "ssogate_requests_total{outcome=\"sign_in\"} 1",
            "ssogate_sign_in_failures_total{reason=\"invalid_token\"} 1",
            "ssogate_sessions_ended_total{cause=\"backchannel\"} 1",
            "ssogate_websockets_open 1",
            "ssogate_upstream_duration_seconds_bucket{le=\"0.005\"} 1",
            "ssogate_gate_duration_seconds_count 2",
        ] {
            assert!(after.contains(want), "{want} missing:\n{after}");
        }
        let other = Metrics::new();
        assert!(
            other
                .render()
                .contains("ssogate_requests_total{outcome=\"forwarded\"} 0"),
            "two gates in one process keep their own counts"
        );
    }
}
