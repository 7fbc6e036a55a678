//! Reading raw variables: envy over `(name, value)` pairs, `.env` via dotenvy.

use serde::Deserialize;

use super::ConfigError;

/// Every variable as the operator wrote it; empty strings are `None`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Raw {
    pub ct_server_url: Option<String>,
    pub ct_upstream_url: Option<String>,
    pub ct_upstream_ca_file: Option<String>,
    pub ct_upstream_http2: Option<String>,
    pub ct_listen_addr: Option<String>,
    pub ct_tls_cert_file: Option<String>,
    pub ct_tls_key_file: Option<String>,
    pub ct_cookie_secret: Option<String>,
    pub ct_allow_unauthenticated: Option<String>,
    pub ct_allowed_origins: Option<String>,
    pub ct_log_format: Option<String>,
    pub ct_header_read_timeout: Option<String>,
    pub ct_shutdown_grace: Option<String>,
    pub ct_sso_authorization_endpt: Option<String>,
    pub ct_sso_token_endpt: Option<String>,
    pub ct_sso_client_id: Option<String>,
    pub ct_sso_client_secret: Option<String>,
    pub ct_sso_provider: Option<String>,
    pub ct_sso_scopes: Option<String>,
    pub ct_sso_ca_file: Option<String>,
    pub ct_sso_leeway: Option<String>,
    pub ct_sso_refresh_skew: Option<String>,
    pub ct_sso_refresh_grace: Option<String>,
    pub ct_session_max_age: Option<String>,
    pub ct_trusted_proxies: Option<String>,
    pub ct_metrics_addr: Option<String>,
    pub ct_max_connections: Option<String>,
    pub ct_worker_threads: Option<String>,
    pub ct_max_header_bytes: Option<String>,
    pub ct_body_idle_timeout: Option<String>,
    pub ct_max_login_states: Option<String>,
    pub ct_max_refreshes: Option<String>,
    pub ct_max_revocations: Option<String>,
    pub ct_sso_allowed_tenants: Option<String>,
    pub ct_sso_email_fallback: Option<String>,
    /// `CT_SSO_*` names this gate does not know (likely typos), for a warning.
    #[serde(skip)]
    pub unknown_sso: Vec<String>,
}

/// `CT_SSO_*` variables the gate reads; anything else under that prefix is reported.
const KNOWN_SSO: &[&str] = &[
    "CT_SSO_AUTHORIZATION_ENDPT",
    "CT_SSO_TOKEN_ENDPT",
    "CT_SSO_CLIENT_ID",
    "CT_SSO_CLIENT_SECRET",
    "CT_SSO_PROVIDER",
    "CT_SSO_SCOPES",
    "CT_SSO_CA_FILE",
    "CT_SSO_LEEWAY",
    "CT_SSO_REFRESH_SKEW",
    "CT_SSO_REFRESH_GRACE",
    "CT_SSO_ALLOWED_TENANTS",
    "CT_SSO_EMAIL_FALLBACK",
];

impl Raw {
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut unknown_sso = Vec::new();
        // One value per name (envy lowercases names), the last one winning:
        // serde refuses a struct with a duplicate field, which would lose
        // every variable when `.env` and the environment both set one.
        let mut latest: std::collections::BTreeMap<String, String> = Default::default();
        pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, v)| {
                let upper = k.to_ascii_uppercase();
                let ours = upper.starts_with("CT_");
                if upper.starts_with("CT_SSO_") && !KNOWN_SSO.contains(&upper.as_str()) {
                    unknown_sso.push(upper);
                }
                ours && !v.trim().is_empty()
            })
            .for_each(|(k, v)| {
                latest.insert(k.to_ascii_lowercase(), v);
            });
        let pairs: Vec<(String, String)> = latest.into_iter().collect();
        // Every field is an optional string, so envy cannot fail on values;
        // a failure here would be a bug in this struct, reported as "nothing set".
        let mut raw: Raw = envy::from_iter(pairs).unwrap_or_default();
        unknown_sso.sort();
        unknown_sso.dedup();
        raw.unknown_sso = unknown_sso;
        raw
    }
}

/// The process environment, with `.env` values underneath (the real
/// environment wins), and what was wrong with `.env`.
pub(super) fn process_pairs() -> (Vec<(String, String)>, Vec<ConfigError>) {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    match dotenvy::from_path_iter(DOTENV) {
        Err(e) if e.not_found() => {}
        Err(dotenvy::Error::Io(e)) => problems.push(dotenv_problem(format!("cannot be read: {e}"))),
        Err(_) => problems.push(dotenv_problem("cannot be read".into())),
        Ok(iter) => {
            for item in iter {
                match item {
                    Ok(pair) => pairs.push(pair),
                    // A read error (e.g. `.env` is a directory) repeats forever.
                    Err(dotenvy::Error::Io(e)) => {
                        problems.push(dotenv_problem(format!("cannot be read: {e}")));
                        break;
                    }
                    // Never the line itself: it may hold a secret.
                    Err(dotenvy::Error::LineParse(line, _)) => {
                        problems.push(dotenv_problem(format!(
                            "{} cannot be parsed (check its quotes and escapes)",
                            which_line(&line)
                        )))
                    }
                    Err(_) => problems.push(dotenv_problem("a line cannot be parsed".into())),
                }
            }
        }
    }
    // Later pairs win in `Raw::from_pairs`, so the real environment goes last.
    pairs.extend(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    (pairs, problems)
}

const DOTENV: &str = ".env";

fn dotenv_problem(problem: String) -> ConfigError {
    ConfigError {
        var: DOTENV,
        problem,
    }
}

/// "the line setting NAME" when the line starts like an assignment.
fn which_line(line: &str) -> String {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").unwrap_or(line);
    match line.split_once('=').map(|(name, _)| name.trim()) {
        Some(name)
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            format!("the line setting {name}")
        }
        _ => "a line".into(),
    }
}
