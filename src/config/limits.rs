//! Resource limits against exhaustion, each with a safe default, and the
//! proxies whose `X-Forwarded-For` is believed (README "Limits").

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::env::Raw;
use super::validate::{Problems, duration};

/// Every bound the gate keeps, from `CT_MAX_*` and `CT_BODY_IDLE_TIMEOUT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `CT_MAX_CONNECTIONS`: open client connections; over it, new ones are closed at once.
    pub max_connections: usize,
    /// `CT_MAX_HEADER_BYTES`: request line plus headers (431 beyond).
    pub max_header_bytes: usize,
    /// `CT_BODY_IDLE_TIMEOUT`: a request body silent this long is aborted.
    pub body_idle_timeout: Duration,
    /// `CT_MAX_LOGIN_STATES`: sign-ins under way per browser (the oldest dropped).
    pub max_login_states: usize,
    /// `CT_MAX_REFRESHES`: sessions remembered by the refresh single-flight.
    pub max_refreshes: usize,
    /// `CT_MAX_REVOCATIONS`: entries on the revocation list.
    pub max_revocations: usize,
    /// `CT_WORKER_THREADS`: serving threads, each with its own runtime and
    /// upstream pool (`server::serve`); `None` is one per CPU the process
    /// may use (cgroup quotas included).
    pub worker_threads: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            body_idle_timeout: Duration::from_secs(60),
            max_login_states: 4,
            max_refreshes: 10_000,
            max_revocations: 100_000,
            worker_threads: None,
        }
    }
}

pub(super) fn limits(raw: &Raw, p: &mut Problems) -> Limits {
    let d = Limits::default();
    let count = |v: &Option<String>, var, default, range: (usize, usize), p: &mut Problems| {
        bounded(v.as_deref(), var, default, range, p)
    };
    Limits {
        max_connections: count(
            &raw.ct_max_connections,
            "CT_MAX_CONNECTIONS",
            d.max_connections,
            (1, 1_000_000),
            p,
        ),
        max_header_bytes: count(
            &raw.ct_max_header_bytes,
            "CT_MAX_HEADER_BYTES",
            d.max_header_bytes,
            (8 * 1024, 1024 * 1024),
            p,
        ),
        body_idle_timeout: duration(
            raw.ct_body_idle_timeout.as_deref(),
            "CT_BODY_IDLE_TIMEOUT",
            d.body_idle_timeout,
            p,
        ),
        max_login_states: count(
            &raw.ct_max_login_states,
            "CT_MAX_LOGIN_STATES",
            d.max_login_states,
            (1, 16),
            p,
        ),
        max_refreshes: count(
            &raw.ct_max_refreshes,
            "CT_MAX_REFRESHES",
            d.max_refreshes,
            (1, 10_000_000),
            p,
        ),
        max_revocations: count(
            &raw.ct_max_revocations,
            "CT_MAX_REVOCATIONS",
            d.max_revocations,
            (1, 10_000_000),
            p,
        ),
        worker_threads: raw
            .ct_worker_threads
            .as_ref()
            .map(|_| count(&raw.ct_worker_threads, "CT_WORKER_THREADS", 1, (1, 1024), p)),
    }
}

fn bounded(
    v: Option<&str>,
    var: &'static str,
    default: usize,
    (min, max): (usize, usize),
    p: &mut Problems,
) -> usize {
    let Some(v) = v else { return default };
    match v.trim().replace('_', "").parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => n,
        _ => {
            p.add(var, format!("must be a whole number from {min} to {max}"));
            default
        }
    }
}

/// `CT_TRUSTED_PROXIES`: addresses or CIDRs, comma- or space-separated.
pub(super) fn trusted_proxies(v: Option<&str>, p: &mut Problems) -> Vec<IpNet> {
    let mut out = Vec::new();
    for item in v
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        match item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => out.push(net.trunc()),
            Err(_) => p.add(
                "CT_TRUSTED_PROXIES",
                format!("`{item}` is not an address or CIDR such as 10.0.0.0/8"),
            ),
        }
    }
    out
}
