//! `ssogate::Config::from_pairs` on arbitrary variables.
//!
//! The input is read as lines (`\n`); a line is `NAME=value`, or, when its
//! first byte is below 0x20, that byte picks one of the variables ssogate
//! reads and the rest of the line is the value (so the fuzzer reaches the
//! validators without spelling names). In values, `\n` (backslash, n)
//! stands for a newline, as a quoted `.env` value or a real environment
//! variable can hold one.
//!
//! Variables naming files (`*_FILE`) are dropped, so no input reads the disk.
//!
//! Properties: never panics; an `Err` names at least one problem, its
//! Display is one line per problem, and it never holds the value of
//! `CT_SSO_CLIENT_SECRET` or `CT_COOKIE_SECRET` (nor one of the comma-
//! separated cookie keys) when that value is at least 8 characters long.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Every variable `src/config/env.rs` reads, but the file ones, plus an
/// unknown `CT_SSO_*` (a typo warning) and a name outside `CT_`.
const NAMES: &[&str] = &[
    "CT_SERVER_URL",
    "CT_UPSTREAM_URL",
    "CT_LISTEN_ADDR",
    "CT_COOKIE_SECRET",
    "CT_ALLOW_UNAUTHENTICATED",
    "CT_ALLOWED_ORIGINS",
    "CT_LOG_FORMAT",
    "CT_HEADER_READ_TIMEOUT",
    "CT_SHUTDOWN_GRACE",
    "CT_SSO_AUTHORIZATION_ENDPT",
    "CT_SSO_TOKEN_ENDPT",
    "CT_SSO_CLIENT_ID",
    "CT_SSO_CLIENT_SECRET",
    "CT_SSO_PROVIDER",
    "CT_SSO_SCOPES",
    "CT_SSO_LEEWAY",
    "CT_SSO_REFRESH_SKEW",
    "CT_SSO_REFRESH_GRACE",
    "CT_SESSION_MAX_AGE",
    "CT_SSO_ALLOWED_TENANTS",
    "CT_SSO_EMAIL_FALLBACK",
    "CT_TRUSTED_PROXIES",
    "CT_METRICS_ADDR",
    "CT_MAX_CONNECTIONS",
    "CT_WORKER_THREADS",
    "CT_MAX_HEADER_BYTES",
    "CT_BODY_IDLE_TIMEOUT",
    "CT_MAX_LOGIN_STATES",
    "CT_MAX_REFRESHES",
    "CT_MAX_REVOCATIONS",
    "CT_SSO_CLIENTSECRET",
    "HOME",
];

const SECRETS: &[&str] = &["CT_SSO_CLIENT_SECRET", "CT_COOKIE_SECRET"];
const MIN_SECRET_LEN: usize = 8;

fn pairs(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let (name, value) = match line.first() {
            Some(&b) if b < 0x20 => (
                NAMES[usize::from(b) % NAMES.len()].to_string(),
                String::from_utf8_lossy(&line[1..]).into_owned(),
            ),
            _ => {
                let line = String::from_utf8_lossy(line);
                let Some((name, value)) = line.split_once('=') else {
                    continue;
                };
                (name.to_string(), value.to_string())
            }
        };
        // Never a file: `from_pairs` reads the disk for these.
        if name.to_ascii_uppercase().ends_with("_FILE") {
            continue;
        }
        out.push((name, value.replace("\\n", "\n")));
    }
    out
}

/// The values `from_pairs` takes for `var` (names are case-insensitive there;
/// the last one wins, and empty values count as unset).
fn value_of<'a>(pairs: &'a [(String, String)], var: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, v)| k.eq_ignore_ascii_case(var) && !v.trim().is_empty())
        .map(|(_, v)| v.as_str())
}

fuzz_target!(|data: &[u8]| {
    let pairs = pairs(data);
    let Err(errors) = ssogate::Config::from_pairs(pairs.clone()) else {
        return;
    };
    assert!(!errors.0.is_empty(), "an Err without a problem");
    let shown = errors.to_string();
    for e in &errors.0 {
        let line = e.to_string();
        assert!(
            !line.contains(['\n', '\r']),
            "a problem spans lines: {line:?}"
        );
    }
    assert_eq!(
        shown.lines().count(),
        errors.0.len(),
        "not one line per problem: {shown:?}"
    );

    // Text that may legitimately hold a secret's characters: every other
    // name and value, and the same problems with the secrets replaced.
    let other: String = pairs
        .iter()
        .filter(|(k, _)| !SECRETS.iter().any(|s| k.eq_ignore_ascii_case(s)))
        .flat_map(|(k, v)| [k.as_str(), "\u{0}", v.as_str(), "\u{0}"])
        .collect();
    for var in SECRETS {
        let Some(secret) = value_of(&pairs, var) else {
            continue;
        };
        let mut candidates = vec![secret];
        if *var == "CT_COOKIE_SECRET" {
            candidates.extend(secret.split(',').map(str::trim));
        }
        for s in candidates {
            if s.chars().count() < MIN_SECRET_LEN || !shown.contains(s) {
                continue;
            }
            if other.contains(s) || NAMES.iter().any(|n| n.contains(s)) {
                continue;
            }
            if template(&pairs, var).contains(s) {
                continue;
            }
            panic!("{var} ({s:?}) is shown in: {shown}");
        }
    }
});

/// The problems with `var` set to a value of the same shape (as many comma-
/// separated keys, each neither base64 nor otherwise like the original), so
/// the fixed wording of each message can be told from an echoed value.
fn template(pairs: &[(String, String)], var: &str) -> String {
    let stand_in = |v: &str| -> String {
        v.split(',')
            .map(|part| {
                if part.trim().is_empty() {
                    ""
                } else {
                    "\u{2603}"
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let replaced: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case(var) {
                (k.clone(), stand_in(v))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let mut text = match ssogate::Config::from_pairs(replaced) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    // The cookie key messages that a stand-in does not produce.
    for n in 0..32 {
        text.push_str(&format!("\u{0}decodes to {n} bytes; at least 32 random bytes are required (e.g. `head -c 32 /dev/urandom | base64`)"));
    }
    text
}
