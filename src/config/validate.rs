//! Turning raw variables into a [`Config`], naming every bad variable once.
//! Apart from reading the files it names, this is pure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use url::{Host, Url};

use super::env::Raw;
use super::files::{self, Files};
use super::{
    Config, ConfigError, ConfigErrors, CookieKeys, LogFormat, Secret, SessionPolicy, TlsFiles,
};
use crate::provider::{self, oidc};

const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
const DEFAULT_SCOPES: &str = "openid profile offline_access";
/// Shortest acceptable cookie key, in bytes.
pub(crate) const MIN_KEY_BYTES: usize = 32;

pub(super) struct Problems(Vec<ConfigError>);

impl Problems {
    pub(super) fn add(&mut self, var: &'static str, problem: impl Into<String>) {
        self.0.push(ConfigError {
            var,
            problem: problem.into(),
        });
    }
}

pub(super) fn validate(raw: Raw, fs: &dyn Files) -> Result<Config, ConfigErrors> {
    let mut p = Problems(Vec::new());
    let mut warnings = Vec::new();

    let server_url = match raw.ct_server_url.as_deref() {
        None => {
            p.add(
                "CT_SERVER_URL",
                "is required: the externally visible https:// URL of the gate",
            );
            None
        }
        Some(v) => server_url(v, &mut p, &mut warnings),
    };
    let upstream_url = match raw.ct_upstream_url.as_deref() {
        None => {
            p.add(
                "CT_UPSTREAM_URL",
                "is required: the http:// or https:// URL of the protected server",
            );
            None
        }
        Some(v) => upstream_url(v, &mut p),
    };
    if upstream_url
        .as_ref()
        .is_some_and(|u| u.scheme() == "http" && !is_loopback(u))
    {
        warnings.push(
            "CT_UPSTREAM_URL uses plain http to a host other than loopback: identity headers cross the network unencrypted, and anyone who can reach the upstream can forge them; keep the upstream on the pod's loopback or behind a NetworkPolicy, or use https".into(),
        );
    }
    let upstream_ca_pem = raw
        .ct_upstream_ca_file
        .as_deref()
        .and_then(|path| read_certs("CT_UPSTREAM_CA_FILE", path, fs, &mut p));
    let upstream_http2 = raw
        .ct_upstream_http2
        .as_deref()
        .map_or(Some(false), |v| parse_bool(v, "CT_UPSTREAM_HTTP2", &mut p))
        .unwrap_or(false);
    let listen_addr = raw
        .ct_listen_addr
        .as_deref()
        .unwrap_or(DEFAULT_LISTEN)
        .trim()
        .parse::<SocketAddr>()
        .map_err(|_| {
            p.add(
                "CT_LISTEN_ADDR",
                "is not an address:port such as 0.0.0.0:8443 or [::]:8443",
            )
        })
        .ok();
    let metrics_addr = raw.ct_metrics_addr.as_deref().and_then(|v| {
        v.trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                p.add(
                    "CT_METRICS_ADDR",
                    "is not an address:port such as 127.0.0.1:9090 or [::]:9090",
                )
            })
            .ok()
    });
    let tls = tls_files(
        raw.ct_tls_cert_file.as_deref(),
        raw.ct_tls_key_file.as_deref(),
        fs,
        &mut p,
    );
    let cookie_keys = cookie_keys(raw.ct_cookie_secret.as_deref(), &mut p, &mut warnings);
    let allow_unauthenticated = raw
        .ct_allow_unauthenticated
        .as_deref()
        .map_or(Some(false), |v| {
            parse_bool(v, "CT_ALLOW_UNAUTHENTICATED", &mut p)
        })
        .unwrap_or(false);
    let allowed_origins = allowed_origins(raw.ct_allowed_origins.as_deref(), &mut p);
    let log_format = match raw
        .ct_log_format
        .as_deref()
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => LogFormat::Text,
        Some(v) if v == "text" => LogFormat::Text,
        Some(v) if v == "json" => LogFormat::Json,
        Some(_) => {
            p.add("CT_LOG_FORMAT", "must be text or json");
            LogFormat::Text
        }
    };
    let header_read_timeout = duration(
        raw.ct_header_read_timeout.as_deref(),
        "CT_HEADER_READ_TIMEOUT",
        Duration::from_secs(10),
        &mut p,
    );
    let shutdown_grace = duration(
        raw.ct_shutdown_grace.as_deref(),
        "CT_SHUTDOWN_GRACE",
        Duration::from_secs(30),
        &mut p,
    );
    let session = SessionPolicy {
        refresh_skew: duration(
            raw.ct_sso_refresh_skew.as_deref(),
            "CT_SSO_REFRESH_SKEW",
            Duration::from_secs(60),
            &mut p,
        ),
        refresh_grace: duration(
            raw.ct_sso_refresh_grace.as_deref(),
            "CT_SSO_REFRESH_GRACE",
            Duration::ZERO,
            &mut p,
        ),
        max_age: raw
            .ct_session_max_age
            .as_deref()
            .map(|v| duration(Some(v), "CT_SESSION_MAX_AGE", Duration::ZERO, &mut p)),
    };
    if session.max_age.is_some_and(|d| d < Duration::from_secs(60)) {
        p.add("CT_SESSION_MAX_AGE", "must be at least 60s");
    }

    let limits = super::limits::limits(&raw, &mut p);
    let trusted_proxies = super::limits::trusted_proxies(raw.ct_trusted_proxies.as_deref(), &mut p);

    let mut login_options = Vec::new();
    if raw.ct_sso_authorization_endpt.is_some() {
        if let Some(settings) = oidc_settings(&raw, fs, &mut p, &mut warnings) {
            login_options.push(provider::Config::Oidc(settings));
        }
        for name in &raw.unknown_sso {
            warnings.push(format!(
                "{name} is not a variable ssogate reads; check its spelling"
            ));
        }
    } else if allow_unauthenticated {
        warnings.push(
            "CT_ALLOW_UNAUTHENTICATED=true and no sign-in configured: every request is forwarded without authentication"
                .into(),
        );
    } else {
        p.add(
            "CT_SSO_AUTHORIZATION_ENDPT",
            "is not set, so nobody could sign in; set it to your provider's issuer URL, or set CT_ALLOW_UNAUTHENTICATED=true to forward everything unauthenticated",
        );
    }

    match (server_url, upstream_url, listen_addr, p.0.is_empty()) {
        (Some(server_url), Some(upstream_url), Some(listen_addr), true) => Ok(Config {
            server_url,
            upstream_url,
            upstream_ca_pem,
            upstream_http2,
            metrics_addr,
            listen_addr,
            tls,
            cookie_keys,
            login_options,
            allow_unauthenticated,
            allowed_origins,
            log_format,
            header_read_timeout,
            shutdown_grace,
            session,
            limits,
            trusted_proxies,
            warnings,
        }),
        _ => Err(ConfigErrors(p.0)),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An absolute http(s) URL whose plain-http form is allowed on loopback only.
fn web_url(
    var: &'static str,
    v: &str,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<Url> {
    let Ok(url) = Url::parse(v.trim()) else {
        p.add(var, "is not an absolute URL (expected https://host…)");
        return None;
    };
    if url.host().is_none() || url.cannot_be_a_base() {
        p.add(
            var,
            "is not an absolute URL with a host (expected https://host…)",
        );
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        p.add(var, "must not carry a user name or password");
        return None;
    }
    match url.scheme() {
        "https" => Some(url),
        "http" if is_loopback(&url) => {
            warnings.push(format!(
                "{var} uses plain http on a loopback host; use https anywhere else"
            ));
            Some(url)
        }
        "http" => {
            p.add(var, "must use https:// (plain http:// is allowed only for localhost and loopback addresses)");
            None
        }
        _ => {
            p.add(var, "must be an https:// URL");
            None
        }
    }
}

/// Reads a PEM bundle of CA certificates, naming `var` on any problem.
fn read_certs(var: &'static str, path: &str, fs: &dyn Files, p: &mut Problems) -> Option<Vec<u8>> {
    let path = PathBuf::from(path.trim());
    match fs.read(&path) {
        Err(e) => {
            p.add(var, format!("cannot read {}: {e}", path.display()));
            None
        }
        Ok(pem) => match files::certs(&pem) {
            Ok(_) => Some(pem),
            Err(e) => {
                p.add(var, format!("{} {e}", path.display()));
                None
            }
        },
    }
}

fn server_url(v: &str, p: &mut Problems, warnings: &mut Vec<String>) -> Option<Url> {
    let url = web_url("CT_SERVER_URL", v, p, warnings)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        p.add(
            "CT_SERVER_URL",
            "must be an origin only (https://host[:port]), without a path, query or fragment",
        );
        return None;
    }
    Some(url)
}

fn upstream_url(v: &str, p: &mut Problems) -> Option<Url> {
    let Ok(url) = Url::parse(v.trim()) else {
        p.add(
            "CT_UPSTREAM_URL",
            "is not an absolute URL (expected http://host:port)",
        );
        return None;
    };
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        p.add(
            "CT_UPSTREAM_URL",
            "must be an http:// or https:// URL with a host",
        );
        return None;
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        p.add(
            "CT_UPSTREAM_URL",
            "must not carry a query, fragment, user name or password",
        );
        return None;
    }
    Some(url)
}

fn tls_files(
    cert: Option<&str>,
    key: Option<&str>,
    fs: &dyn Files,
    p: &mut Problems,
) -> Option<TlsFiles> {
    match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            p.add(
                "CT_TLS_KEY_FILE",
                "is required when CT_TLS_CERT_FILE is set",
            );
            None
        }
        (None, Some(_)) => {
            p.add(
                "CT_TLS_CERT_FILE",
                "is required when CT_TLS_KEY_FILE is set",
            );
            None
        }
        (Some(cert), Some(key)) => {
            let cert_file = PathBuf::from(cert.trim());
            let key_file = PathBuf::from(key.trim());
            let cert_ok = match fs.read(&cert_file) {
                Err(e) => {
                    p.add(
                        "CT_TLS_CERT_FILE",
                        format!("cannot read {}: {e}", cert_file.display()),
                    );
                    false
                }
                Ok(pem) => files::certs(&pem)
                    .map_err(|e| p.add("CT_TLS_CERT_FILE", format!("{} {e}", cert_file.display())))
                    .is_ok(),
            };
            let key_ok = match fs.read(&key_file) {
                Err(e) => {
                    p.add(
                        "CT_TLS_KEY_FILE",
                        format!("cannot read {}: {e}", key_file.display()),
                    );
                    false
                }
                Ok(pem) => files::private_key(&pem)
                    .map_err(|e| p.add("CT_TLS_KEY_FILE", format!("{} {e}", key_file.display())))
                    .is_ok(),
            };
            (cert_ok && key_ok).then_some(TlsFiles {
                cert_file,
                key_file,
            })
        }
    }
}

/// Decodes standard or URL-safe base64, padded or not.
pub(crate) fn decode_base64(v: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(v).ok())
}

fn cookie_keys(v: Option<&str>, p: &mut Problems, warnings: &mut Vec<String>) -> CookieKeys {
    let Some(v) = v else {
        warnings.push(
            "CT_COOKIE_SECRET is not set: a random key was made, so sessions end when the process restarts and replicas cannot share them"
                .into(),
        );
        let mut key = vec![0u8; MIN_KEY_BYTES];
        rand::Rng::fill(&mut rand::thread_rng(), key.as_mut_slice());
        return CookieKeys {
            keys: vec![Secret::new(key)],
            generated: true,
        };
    };
    let parts: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let total = parts.len();
    let mut keys = Vec::with_capacity(total);
    for (i, part) in parts.into_iter().enumerate() {
        let which = if total > 1 {
            format!("key {} of {total}", i + 1)
        } else {
            "the key".to_string()
        };
        match decode_base64(part) {
            None => p.add("CT_COOKIE_SECRET", format!("{which} is not base64")),
            Some(bytes) if bytes.len() < MIN_KEY_BYTES => p.add(
                "CT_COOKIE_SECRET",
                format!("{which} decodes to {} bytes; at least {MIN_KEY_BYTES} random bytes are required (e.g. `head -c 32 /dev/urandom | base64`)", bytes.len()),
            ),
            Some(bytes) => keys.push(Secret::new(bytes)),
        }
    }
    CookieKeys {
        keys,
        generated: false,
    }
}

fn parse_bool(v: &str, var: &'static str, p: &mut Problems) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => {
            p.add(var, "must be true or false");
            None
        }
    }
}

/// `30s`, `5m`, `1h30m` or a bare number of seconds.
pub(crate) fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    v.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| humantime::parse_duration(v).ok())
}

pub(super) fn duration(
    v: Option<&str>,
    var: &'static str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    match v {
        None => default,
        Some(v) => parse_duration(v).unwrap_or_else(|| {
            p.add(var, "is not a duration such as 30s, 5m or 1h");
            default
        }),
    }
}

fn allowed_origins(v: Option<&str>, p: &mut Problems) -> Vec<String> {
    let mut out = Vec::new();
    for item in v
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match Url::parse(item) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/" =>
            {
                out.push(u.origin().ascii_serialization());
            }
            _ => p.add(
                "CT_ALLOWED_ORIGINS",
                format!("`{item}` is not an origin such as https://app.example.com"),
            ),
        }
    }
    out
}

fn oidc_settings(
    raw: &Raw,
    fs: &dyn Files,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<oidc::Settings> {
    let issuer = raw
        .ct_sso_authorization_endpt
        .as_deref()
        .and_then(|v| web_url("CT_SSO_AUTHORIZATION_ENDPT", v, p, warnings));
    if issuer
        .as_ref()
        .is_some_and(|u| u.query().is_some() || u.fragment().is_some())
    {
        p.add(
            "CT_SSO_AUTHORIZATION_ENDPT",
            "must not carry a query or fragment",
        );
    }
    let token_endpoint = raw
        .ct_sso_token_endpt
        .as_deref()
        .and_then(|v| web_url("CT_SSO_TOKEN_ENDPT", v, p, warnings));
    let client_id = raw.ct_sso_client_id.clone().map(|s| s.trim().to_string());
    if client_id.is_none() {
        p.add(
            "CT_SSO_CLIENT_ID",
            "is required when CT_SSO_AUTHORIZATION_ENDPT is set",
        );
    }
    let client_secret = raw.ct_sso_client_secret.clone();
    if client_secret.is_none() {
        p.add(
            "CT_SSO_CLIENT_SECRET",
            "is required when CT_SSO_AUTHORIZATION_ENDPT is set",
        );
    }
    let quirks = match raw
        .ct_sso_provider
        .as_deref()
        .map(|v| v.trim().to_ascii_uppercase())
    {
        None => Some(oidc::Quirks::Generic),
        Some(v) if v == "OKTA" => Some(oidc::Quirks::Okta),
        Some(v) if v == "MICROSOFT" => Some(oidc::Quirks::Microsoft),
        Some(_) => {
            p.add(
                "CT_SSO_PROVIDER",
                "must be OKTA or MICROSOFT, or unset for any other provider",
            );
            None
        }
    };
    let scopes: Vec<String> = raw
        .ct_sso_scopes
        .as_deref()
        .unwrap_or(DEFAULT_SCOPES)
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        p.add("CT_SSO_SCOPES", "must include openid");
    }
    let ca_pem = raw
        .ct_sso_ca_file
        .as_deref()
        .and_then(|path| read_certs("CT_SSO_CA_FILE", path, fs, p));
    let leeway = duration(
        raw.ct_sso_leeway.as_deref(),
        "CT_SSO_LEEWAY",
        Duration::from_secs(60),
        p,
    );
    if leeway > Duration::from_secs(600) {
        p.add("CT_SSO_LEEWAY", "must be at most 10m");
    }
    let allowed_tenants = list(raw.ct_sso_allowed_tenants.as_deref());
    if let Some(bad) = allowed_tenants
        .iter()
        .find(|t| !oidc::quirks::is_tenant_id(t))
    {
        p.add(
            "CT_SSO_ALLOWED_TENANTS",
            format!(
                "`{bad}` is not a tenant id (a GUID such as 9188040d-6c67-4c5b-b112-36a304b66dad)"
            ),
        );
    }
    let email_fallback = list(raw.ct_sso_email_fallback.as_deref());
    if let Some(bad) = email_fallback
        .iter()
        .find(|c| !oidc::quirks::EMAIL_FALLBACK_CLAIMS.contains(&c.as_str()))
    {
        p.add(
            "CT_SSO_EMAIL_FALLBACK",
            format!(
                "`{bad}` is not one of {}",
                oidc::quirks::EMAIL_FALLBACK_CLAIMS.join(", ")
            ),
        );
    }
    Some(oidc::Settings {
        id: "oidc".into(),
        issuer: issuer?,
        token_endpoint,
        client_id: client_id?,
        client_secret: Secret::new(client_secret?),
        quirks: quirks?,
        scopes,
        ca_pem,
        leeway,
        allowed_tenants,
        email_fallback,
    })
}

/// A comma- or space-separated list, trimmed, without empty items.
fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
