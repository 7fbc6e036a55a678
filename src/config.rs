//! The gate's configuration: plain data, read once from a replaceable source.
//!
//! [`Config::from_pairs`] takes `(name, value)` pairs so tests never touch the
//! process environment; [`Config::from_env`] is a thin wrapper that adds the
//! real environment and a `.env` file (the real environment wins).
//! Empty values count as unset, as Kubernetes ConfigMaps often carry them.

mod env;
mod files;
mod limits;
mod secret;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use limits::Limits;

pub use secret::Secret;

/// Parses a PEM certificate bundle (for callers outside configuration).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    files::certs(pem)
}

/// Parses a PEM private key.
pub fn parse_private_key(pem: &[u8]) -> Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    files::private_key(pem)
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A validated configuration; building one is the only way in.
#[derive(Clone, Debug)]
pub struct Config {
    /// `CT_SERVER_URL`: the externally visible origin of the gate.
    pub server_url: Url,
    /// `CT_UPSTREAM_URL`: where authenticated traffic goes.
    pub upstream_url: Url,
    /// `CT_UPSTREAM_CA_FILE`: extra PEM roots for an https upstream.
    pub upstream_ca_pem: Option<Vec<u8>>,
    /// `CT_UPSTREAM_HTTP2`: requests go to the upstream over HTTP/2 (by
    /// prior knowledge over `http://`, by ALPN over `https://`).
    pub upstream_http2: bool,
    pub listen_addr: SocketAddr,
    /// `CT_METRICS_ADDR`: where Prometheus metrics are served (off when unset).
    pub metrics_addr: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub cookie_keys: CookieKeys,
    /// Login options; empty when SSO is off.
    pub login_options: Vec<crate::provider::Config>,
    pub allow_unauthenticated: bool,
    /// Origins (besides the gate's own) whose pages may open WebSockets.
    pub allowed_origins: Vec<String>,
    pub log_format: LogFormat,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub session: SessionPolicy,
    pub limits: Limits,
    /// `CT_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is kept and appended to.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Things worth a warning at startup (plain http on loopback, generated
    /// cookie secret, authentication switched off).
    pub warnings: Vec<String>,
}

/// How sessions age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// `CT_SSO_REFRESH_SKEW`: refresh this long before the tokens expire (default 60 s).
    pub refresh_skew: Duration,
    /// `CT_SSO_REFRESH_GRACE`: how long a session whose refresh could not be
    /// performed (provider unreachable) keeps working past its expiry (default 0: fail closed).
    pub refresh_grace: Duration,
    /// `CT_SESSION_MAX_AGE`: an absolute lifetime, whatever the refreshes.
    pub max_age: Option<Duration>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            refresh_skew: Duration::from_secs(60),
            refresh_grace: Duration::ZERO,
            max_age: None,
        }
    }
}

/// PEM files for the gate's own HTTPS listener.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Cookie sealing keys: the first seals, all open.
#[derive(Clone, Debug)]
pub struct CookieKeys {
    pub keys: Vec<Secret<Vec<u8>>>,
    /// True when no `CT_COOKIE_SECRET` was given and a random key was made.
    pub generated: bool,
}

/// One problem with one variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    /// One line, always: a control character of an echoed value (a newline
    /// in `CT_ALLOWED_ORIGINS`, say) is shown escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.var)?;
        for c in self.problem.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Every problem found, in the order of the variables.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Config {
    /// Reads the process environment, plus `.env` in the working directory.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let (pairs, mut problems) = env::process_pairs();
        match Self::from_pairs(pairs) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors(problems)),
            Err(ConfigErrors(more)) => {
                problems.extend(more);
                Err(ConfigErrors(problems))
            }
        }
    }

    /// Builds a configuration from `(name, value)` pairs, reporting every problem.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let raw = env::Raw::from_pairs(pairs);
        validate::validate(raw, &files::Disk)
    }

    /// The redirect URI registered at the provider.
    pub fn callback_url(&self) -> String {
        self.route_url(crate::routes::CALLBACK)
    }

    /// The post-logout redirect URI registered at the provider.
    pub fn logout_url(&self) -> String {
        self.route_url(crate::routes::LOGOUT)
    }

    /// Whether the gate is reached over HTTPS (decides `Secure` and cookie prefixes).
    pub fn is_https(&self) -> bool {
        self.server_url.scheme() == "https"
    }

    /// The gate's own origin, as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        self.server_url.origin().ascii_serialization()
    }

    fn route_url(&self, path: &str) -> String {
        format!("{}{}", self.origin(), path)
    }
}

#[cfg(test)]
mod tests;
