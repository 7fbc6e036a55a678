use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::env::Raw;
use super::files::Files;
use super::validate::validate;
use super::*;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

struct FakeFs(HashMap<PathBuf, Vec<u8>>);

impl Files for FakeFs {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.0.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }
}

fn good() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CT_SERVER_URL", "https://ct.example.com"),
        ("CT_UPSTREAM_URL", "http://127.0.0.1:1080"),
        (
            "CT_SSO_AUTHORIZATION_ENDPT",
            "https://example.okta.com/oauth2/default",
        ),
        ("CT_SSO_CLIENT_ID", "client"),
        ("CT_SSO_CLIENT_SECRET", "s3cr3t-value"),
        ("CT_COOKIE_SECRET", KEY),
    ]
}

fn run(pairs: Vec<(&str, &str)>) -> Result<Config, ConfigErrors> {
    validate(Raw::from_pairs(pairs), &FakeFs(HashMap::new()))
}

fn with(
    mut pairs: Vec<(&'static str, &'static str)>,
    k: &'static str,
    v: &'static str,
) -> Vec<(&'static str, &'static str)> {
    pairs.retain(|(n, _)| *n != k);
    pairs.push((k, v));
    pairs
}

fn without(
    mut pairs: Vec<(&'static str, &'static str)>,
    k: &str,
) -> Vec<(&'static str, &'static str)> {
    pairs.retain(|(n, _)| *n != k);
    pairs
}

/// The single error a configuration produces, as printed.
fn one_error(pairs: Vec<(&str, &str)>) -> String {
    let errs = run(pairs).expect_err("configuration should be refused").0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs[0].to_string()
}

#[test]
fn a_good_configuration_loads_with_defaults() {
    let c = run(good()).unwrap();
    assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8443");
    assert_eq!(
        c.callback_url(),
        "https://ct.example.com/sso/authorization-code/callback"
    );
    assert_eq!(c.logout_url(), "https://ct.example.com/sso/logout");
    assert!(c.is_https());
    assert_eq!(c.login_options.len(), 1);
    let crate::provider::Config::Oidc(s) = &c.login_options[0];
    assert_eq!(s.scopes, vec!["openid", "profile", "offline_access"]);
    assert_eq!(s.quirks, crate::provider::oidc::Quirks::Generic);
    assert!(s.token_endpoint.is_none());
    assert!(!c.cookie_keys.generated);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn each_bad_setting_is_named_in_one_line() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            without(good(), "CT_SSO_CLIENT_ID"),
            "CT_SSO_CLIENT_ID: is required",
        ),
        (
            without(good(), "CT_SSO_CLIENT_SECRET"),
            "CT_SSO_CLIENT_SECRET: is required",
        ),
        (
            with(good(), "CT_SERVER_URL", "http://ct.example.com"),
            "CT_SERVER_URL: must use https://",
        ),
        (
            with(good(), "CT_SERVER_URL", "ct.example.com"),
            "CT_SERVER_URL: is not an absolute URL",
        ),
        (
            with(good(), "CT_SERVER_URL", "https://ct.example.com/sub"),
            "CT_SERVER_URL: must be an origin only",
        ),
        (
            without(good(), "CT_SERVER_URL"),
            "CT_SERVER_URL: is required",
        ),
        (
            with(good(), "CT_SSO_PROVIDER", "google"),
            "CT_SSO_PROVIDER: must be OKTA or MICROSOFT",
        ),
        (
            with(good(), "CT_COOKIE_SECRET", "not base64 !!"),
            "CT_COOKIE_SECRET: the key is not base64",
        ),
        (
            with(good(), "CT_COOKIE_SECRET", "c2hvcnQ="),
            "CT_COOKIE_SECRET: the key decodes to 5 bytes",
        ),
        (
            with(good(), "CT_UPSTREAM_URL", "not a url"),
            "CT_UPSTREAM_URL: is not an absolute URL",
        ),
        (
            with(good(), "CT_UPSTREAM_URL", "ftp://x"),
            "CT_UPSTREAM_URL: must be an http:// or https:// URL",
        ),
        (
            without(good(), "CT_UPSTREAM_URL"),
            "CT_UPSTREAM_URL: is required",
        ),
        (
            with(good(), "CT_TLS_CERT_FILE", "/tls/cert.pem"),
            "CT_TLS_KEY_FILE: is required when CT_TLS_CERT_FILE is set",
        ),
        (
            with(good(), "CT_TLS_KEY_FILE", "/tls/key.pem"),
            "CT_TLS_CERT_FILE: is required when CT_TLS_KEY_FILE is set",
        ),
        (
            with(good(), "CT_LISTEN_ADDR", "8443"),
            "CT_LISTEN_ADDR: is not an address:port",
        ),
        (
            with(good(), "CT_ALLOW_UNAUTHENTICATED", "maybe"),
            "CT_ALLOW_UNAUTHENTICATED: must be true or false",
        ),
        (
            with(good(), "CT_UPSTREAM_HTTP2", "h2c"),
            "CT_UPSTREAM_HTTP2: must be true or false",
        ),
        (
            with(good(), "CT_SSO_SCOPES", "profile email"),
            "CT_SSO_SCOPES: must include openid",
        ),
        (
            with(good(), "CT_SSO_CA_FILE", "/missing/ca.pem"),
            "CT_SSO_CA_FILE: cannot read /missing/ca.pem",
        ),
        (
            with(
                good(),
                "CT_SSO_AUTHORIZATION_ENDPT",
                "http://idp.example.com",
            ),
            "CT_SSO_AUTHORIZATION_ENDPT: must use https://",
        ),
        (
            with(good(), "CT_SSO_TOKEN_ENDPT", "nope"),
            "CT_SSO_TOKEN_ENDPT: is not an absolute URL",
        ),
        (
            with(good(), "CT_LOG_FORMAT", "xml"),
            "CT_LOG_FORMAT: must be text or json",
        ),
        (
            with(good(), "CT_SHUTDOWN_GRACE", "soon"),
            "CT_SHUTDOWN_GRACE: is not a duration",
        ),
        (
            with(good(), "CT_ALLOWED_ORIGINS", "not-an-origin"),
            "CT_ALLOWED_ORIGINS: `not-an-origin` is not an origin",
        ),
        (
            without(good(), "CT_SSO_AUTHORIZATION_ENDPT"),
            "CT_SSO_AUTHORIZATION_ENDPT: is not set, so nobody could sign in",
        ),
        (
            with(good(), "CT_TRUSTED_PROXIES", "10.0.0.0/8,not-a-net"),
            "CT_TRUSTED_PROXIES: `not-a-net` is not an address or CIDR",
        ),
        (
            with(good(), "CT_MAX_CONNECTIONS", "0"),
            "CT_MAX_CONNECTIONS: must be a whole number from 1 to 1000000",
        ),
        (
            with(good(), "CT_WORKER_THREADS", "0"),
            "CT_WORKER_THREADS: must be a whole number from 1 to 1024",
        ),
        (
            with(good(), "CT_MAX_HEADER_BYTES", "1024"),
            "CT_MAX_HEADER_BYTES: must be a whole number from 8192 to 1048576",
        ),
        (
            with(good(), "CT_MAX_LOGIN_STATES", "many"),
            "CT_MAX_LOGIN_STATES: must be a whole number from 1 to 16",
        ),
        (
            with(good(), "CT_BODY_IDLE_TIMEOUT", "soon"),
            "CT_BODY_IDLE_TIMEOUT: is not a duration",
        ),
        (
            with(good(), "CT_SSO_ALLOWED_TENANTS", "contoso/../x"),
            "CT_SSO_ALLOWED_TENANTS: `contoso/../x` is not a tenant id",
        ),
        (
            with(good(), "CT_SSO_EMAIL_FALLBACK", "upn,name"),
            "CT_SSO_EMAIL_FALLBACK: `name` is not one of preferred_username, upn, unique_name",
        ),
    ];
    for (pairs, expected) in cases {
        let line = one_error(pairs);
        assert!(
            line.starts_with(expected),
            "expected `{expected}…`, got `{line}`"
        );
        assert!(!line.contains('\n'));
    }
}

#[test]
fn tls_files_are_read_and_parsed() {
    let fs = FakeFs(HashMap::from([
        (PathBuf::from("/tls/cert.pem"), b"not pem".to_vec()),
        (
            PathBuf::from("/tls/key.pem"),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
        ),
    ]));
    let pairs = with(
        with(good(), "CT_TLS_CERT_FILE", "/tls/cert.pem"),
        "CT_TLS_KEY_FILE",
        "/tls/missing.pem",
    );
    let errs = validate(Raw::from_pairs(pairs), &fs).unwrap_err().0;
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("CT_TLS_CERT_FILE: /tls/cert.pem holds no PEM certificate"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("CT_TLS_KEY_FILE: cannot read /tls/missing.pem"),
        "{}",
        lines[1]
    );
}

#[test]
fn every_problem_is_reported_at_once_and_no_secret_is_shown() {
    let pairs = vec![
        ("CT_SERVER_URL", "http://ct.example.com"),
        ("CT_UPSTREAM_URL", "nope"),
        ("CT_SSO_AUTHORIZATION_ENDPT", "https://idp.example.com"),
        ("CT_SSO_CLIENT_SECRET", "super-secret-value"),
        ("CT_COOKIE_SECRET", "c2VjcmV0LWNvb2tpZQ=="),
        ("CT_SSO_PROVIDER", "other"),
    ];
    let text = run(pairs).unwrap_err().to_string();
    for var in [
        "CT_SERVER_URL",
        "CT_UPSTREAM_URL",
        "CT_SSO_CLIENT_ID",
        "CT_COOKIE_SECRET",
        "CT_SSO_PROVIDER",
    ] {
        assert!(text.contains(var), "{var} missing from:\n{text}");
    }
    assert_eq!(text.lines().count(), 5, "{text}");
    for secret in [
        "super-secret-value",
        "c2VjcmV0LWNvb2tpZQ==",
        "secret-cookie",
    ] {
        assert!(!text.contains(secret));
    }
}

#[test]
fn loopback_http_empty_values_and_variants_are_accepted() {
    let pairs = vec![
        ("CT_SERVER_URL", "http://localhost:8443"),
        ("CT_UPSTREAM_URL", "http://127.0.0.1:1080/base/"),
        ("CT_SSO_AUTHORIZATION_ENDPT", "http://127.0.0.1:9001"),
        ("CT_SSO_CLIENT_ID", "c"),
        ("CT_SSO_CLIENT_SECRET", "s"),
        ("CT_SSO_PROVIDER", "microsoft"),
        ("CT_SSO_TOKEN_ENDPT", ""),
        ("CT_SSO_SCOPES", "openid,profile  email"),
        (
            "CT_COOKIE_SECRET",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY, AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        ("CT_SHUTDOWN_GRACE", "2m"),
        ("CT_HEADER_READ_TIMEOUT", "5"),
        (
            "CT_ALLOWED_ORIGINS",
            "https://a.example, http://localhost:3000",
        ),
        ("CT_SSO_TYPO", "x"),
        ("PATH", "/bin"),
    ];
    let c = run(pairs).unwrap();
    assert!(!c.is_https());
    assert_eq!(c.cookie_keys.keys.len(), 2);
    assert_eq!(c.shutdown_grace.as_secs(), 120);
    assert_eq!(c.header_read_timeout.as_secs(), 5);
    assert_eq!(
        c.allowed_origins,
        vec!["https://a.example", "http://localhost:3000"]
    );
    let crate::provider::Config::Oidc(s) = &c.login_options[0];
    assert_eq!(s.quirks, crate::provider::oidc::Quirks::Microsoft);
    assert!(s.token_endpoint.is_none(), "an empty value is unset");
    assert_eq!(s.scopes, vec!["openid", "profile", "email"]);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("CT_SERVER_URL uses plain http"))
    );
    assert!(c.warnings.iter().any(|w| w.contains("CT_SSO_TYPO")));
}

#[test]
fn unauthenticated_mode_needs_an_explicit_switch_and_ignores_sso_extras() {
    let base = vec![
        ("CT_SERVER_URL", "https://ct.example.com"),
        ("CT_UPSTREAM_URL", "http://127.0.0.1:1"),
    ];
    let c = run(with(base.clone(), "CT_ALLOW_UNAUTHENTICATED", "TRUE")).unwrap();
    assert!(c.login_options.is_empty());
    assert!(c.cookie_keys.generated);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("without authentication"))
    );
    // With SSO off every other CT_SSO_* is ignored, even invalid ones.
    let ignored = with(
        with(base, "CT_ALLOW_UNAUTHENTICATED", "true"),
        "CT_SSO_PROVIDER",
        "nonsense",
    );
    assert!(run(ignored).is_ok());
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let c = run(good()).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("s3cr3t-value"));
    assert!(!dump.contains(KEY));
}

#[test]
fn a_variable_given_twice_keeps_the_last_value_and_the_others() {
    // `.env` first, then the real environment: the same name twice (in any
    // case) must not lose the whole configuration.
    let mut pairs = vec![
        ("CT_UPSTREAM_URL", "http://[bad"),
        ("ct_server_url", "https://dotenv.example.com"),
    ];
    pairs.extend(good());
    let c = run(pairs).unwrap();
    assert_eq!(c.upstream_url.as_str(), "http://127.0.0.1:1080/");
    assert_eq!(c.server_url.as_str(), "https://ct.example.com/");
}

#[test]
fn an_upstream_url_with_a_password_is_refused_without_showing_it() {
    let e = one_error(with(
        good(),
        "CT_UPSTREAM_URL",
        "http://:pw-1234@127.0.0.1:1080",
    ));
    assert!(e.starts_with("CT_UPSTREAM_URL: "), "{e}");
    assert!(!e.contains("pw-1234"), "{e}");
}

#[test]
fn tenant_and_email_fallback_lists_are_trimmed() {
    let pairs = with(
        with(
            good(),
            "CT_SSO_ALLOWED_TENANTS",
            " 9188040d-6c67-4c5b-b112-36a304b66dad , 72f988bf-86f1-41af-91ab-2d7cd011db47",
        ),
        "CT_SSO_EMAIL_FALLBACK",
        "upn preferred_username",
    );
    let config = run(pairs).expect("valid");
    let crate::provider::Config::Oidc(s) = &config.login_options[0];
    assert_eq!(
        s.allowed_tenants,
        [
            "9188040d-6c67-4c5b-b112-36a304b66dad",
            "72f988bf-86f1-41af-91ab-2d7cd011db47"
        ]
    );
    assert_eq!(s.email_fallback, ["upn", "preferred_username"]);
}

#[test]
fn limits_and_trusted_proxies_have_safe_defaults_and_can_be_set() {
    let config = run(good()).expect("valid");
    assert_eq!(config.limits, Limits::default());
    assert!(
        config.trusted_proxies.is_empty(),
        "no proxy is trusted by default"
    );
    let pairs = with(
        with(
            with(
                good(),
                "CT_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.1.7 fd00::/8",
            ),
            "CT_MAX_CONNECTIONS",
            "50_000",
        ),
        "CT_BODY_IDLE_TIMEOUT",
        "2m",
    );
    let config = run(pairs).expect("valid");
    let nets: Vec<String> = config
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
    assert_eq!(config.limits.max_connections, 50_000);
    assert_eq!(config.limits.body_idle_timeout, Duration::from_secs(120));
}

/// Found by the `config` fuzz target: a value with a newline echoed in a
/// problem made the message two lines.
#[test]
fn an_echoed_value_never_breaks_the_one_line_rule() {
    let line = one_error(with(good(), "CT_ALLOWED_ORIGINS", ":\nH"));
    assert!(!line.contains('\n'), "{line:?}");
    assert!(
        line.starts_with("CT_ALLOWED_ORIGINS: `:\\nH` is not an origin"),
        "{line:?}"
    );
}

#[test]
fn http2_to_the_upstream_is_off_unless_switched_on() {
    assert!(!run(good()).unwrap().upstream_http2);
    for on in ["true", "1", "yes", "ON"] {
        assert!(
            run(with(good(), "CT_UPSTREAM_HTTP2", on))
                .unwrap()
                .upstream_http2,
            "{on}"
        );
    }
    for off in ["false", "0", "no", "off"] {
        assert!(
            !run(with(good(), "CT_UPSTREAM_HTTP2", off))
                .unwrap()
                .upstream_http2,
            "{off}"
        );
    }
}
