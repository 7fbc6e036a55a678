//! Configuration as an operator meets it: the real binary with a clean
//! environment, bad settings, `.env`, and `ssogate check-config`.

use std::time::Duration;

use super::binary::{Run, Served, free_port, run, vars};
use crate::support::certs::TestPki;
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET};
use crate::support::idp::{Idp, IdpOptions};
use crate::support::upstream::Upstream;

const GATE: &str = "https://gate.example.com";
/// Values that must never show up in any output.
const SECRETS: [&str; 2] = [CLIENT_SECRET, COOKIE_SECRET];

/// A complete, valid configuration with SSO on (the provider is not needed
/// to start: it is loaded in the background).
pub(super) fn good() -> Vec<(String, String)> {
    vars(&[
        ("CT_SERVER_URL", GATE),
        ("CT_UPSTREAM_URL", "http://127.0.0.1:9"),
        ("CT_SSO_AUTHORIZATION_ENDPT", "https://idp.example.com"),
        ("CT_SSO_CLIENT_ID", CLIENT_ID),
        ("CT_SSO_CLIENT_SECRET", CLIENT_SECRET),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
        // Should a bad setting be accepted, the gate serves somewhere harmless
        // until the run times out (and the case fails).
        ("CT_LISTEN_ADDR", "127.0.0.1:0"),
    ])
}

/// `good()` with `set` replacing or adding variables and `unset` removed.
pub(super) fn changed(set: &[(&str, &str)], unset: &[&str]) -> Vec<(String, String)> {
    let mut v = good();
    v.retain(|(k, _)| !unset.contains(&k.as_str()) && !set.iter().any(|(s, _)| s == k));
    v.extend(vars(set));
    v
}

/// One bad setting and what the operator must be told.
pub(super) struct Bad {
    pub(super) what: &'static str,
    pub(super) env: Vec<(String, String)>,
    /// The variable the single error line names.
    pub(super) var: &'static str,
    /// Values given in this case that must not be echoed.
    pub(super) hidden: Vec<String>,
}

pub(super) fn assert_refused(bad: &Bad, r: &Run) {
    let what = bad.what;
    assert!(
        matches!(r.code, Some(c) if c != 0),
        "{what}: expected a non-zero exit, got {:?}; {r:?}",
        r.code
    );
    r.assert_no_crash();
    let lines = r.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got {lines:#?}"
    );
    assert!(
        lines[0].contains(&format!("{}:", bad.var)),
        "{what}: the line does not name {}: {:?}",
        bad.var,
        lines[0]
    );
    assert!(
        lines[0].len() > bad.var.len() + 30,
        "{what}: the line does not say what is wrong: {:?}",
        lines[0]
    );
    assert!(r.stdout.trim().is_empty(), "{what}: stdout: {:?}", r.stdout);
    r.assert_hides(&SECRETS);
    let hidden: Vec<&str> = bad.hidden.iter().map(String::as_str).collect();
    r.assert_hides(&hidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valid_base_configuration_starts_and_logs_no_secret() {
    // The control for every "bad setting" case below: the same variables
    // without the one bad change serve, and their logs hold no secret.
    let dir = tempfile::tempdir().unwrap();
    let mut env = good();
    env.retain(|(k, _)| k != "CT_SERVER_URL");
    // Plain http on loopback is allowed with a warning; TLS is not needed here.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let gate = Served::start(dir.path(), env, false, &client).await;
    let ready = client.get(gate.url("/sso/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "idp.example.com is not reachable");
    crate::assert_eventually!(
        gate.output()
            .contains("CT_SERVER_URL uses plain http on a loopback host")
            && gate.output().contains("ssogate serving"),
        Duration::from_secs(5),
        "no warning for plain http or no startup line:\n{}",
        gate.output()
    );
    let logs = gate.output();
    for s in SECRETS {
        assert!(!logs.contains(s), "the logs show a secret:\n{logs}");
    }
}

fn bad_settings(pki: &TestPki) -> Vec<Bad> {
    let short_key = "c2hvcnQtY29va2llLWtleS0xNg=="; // "short-cookie-key-16" (19 bytes)
    let not_base64 = "not base64: hunter2-cookie!";
    let cert = pki.cert_file.display().to_string();
    let key = pki.key_file.display().to_string();
    let dir_as_key = pki.dir.path().display().to_string();
    let missing = pki.dir.path().join("missing.pem").display().to_string();
    vec![
        Bad {
            what: "missing client id",
            env: changed(&[], &["CT_SSO_CLIENT_ID"]),
            var: "CT_SSO_CLIENT_ID",
            hidden: vec![],
        },
        Bad {
            what: "missing client secret with SSO on",
            env: changed(&[], &["CT_SSO_CLIENT_SECRET"]),
            var: "CT_SSO_CLIENT_SECRET",
            hidden: vec![],
        },
        Bad {
            what: "plain http server URL for a non-loopback host",
            env: changed(&[("CT_SERVER_URL", "http://gate.example.com")], &[]),
            var: "CT_SERVER_URL",
            hidden: vec![],
        },
        Bad {
            what: "server URL not absolute",
            env: changed(&[("CT_SERVER_URL", "gate.example.com/")], &[]),
            var: "CT_SERVER_URL",
            hidden: vec![],
        },
        Bad {
            what: "missing server URL",
            env: changed(&[], &["CT_SERVER_URL"]),
            var: "CT_SERVER_URL",
            hidden: vec![],
        },
        Bad {
            what: "unknown provider",
            env: changed(&[("CT_SSO_PROVIDER", "KEYCLOAK")], &[]),
            var: "CT_SSO_PROVIDER",
            hidden: vec![],
        },
        Bad {
            what: "cookie secret not base64",
            env: changed(&[("CT_COOKIE_SECRET", not_base64)], &[]),
            var: "CT_COOKIE_SECRET",
            hidden: vec![not_base64.into(), "hunter2".into()],
        },
        Bad {
            what: "cookie secret shorter than 32 bytes",
            env: changed(&[("CT_COOKIE_SECRET", short_key)], &[]),
            var: "CT_COOKIE_SECRET",
            hidden: vec![short_key.into(), "short-cookie-key".into()],
        },
        Bad {
            what: "unparsable upstream URL",
            env: changed(&[("CT_UPSTREAM_URL", "http://[::1:8080")], &[]),
            var: "CT_UPSTREAM_URL",
            hidden: vec![],
        },
        Bad {
            what: "upstream URL carrying a password",
            env: changed(
                &[("CT_UPSTREAM_URL", "http://:upstream-pw-77@127.0.0.1:9")],
                &[],
            ),
            var: "CT_UPSTREAM_URL",
            hidden: vec!["upstream-pw-77".into()],
        },
        Bad {
            what: "server URL carrying a password",
            env: changed(
                &[("CT_SERVER_URL", "https://op:server-pw-55@gate.example.com")],
                &[],
            ),
            var: "CT_SERVER_URL",
            hidden: vec!["server-pw-55".into()],
        },
        Bad {
            what: "TLS certificate without key",
            env: changed(&[("CT_TLS_CERT_FILE", &cert)], &[]),
            var: "CT_TLS_KEY_FILE",
            hidden: vec![],
        },
        Bad {
            what: "TLS key without certificate",
            env: changed(&[("CT_TLS_KEY_FILE", &key)], &[]),
            var: "CT_TLS_CERT_FILE",
            hidden: vec![],
        },
        Bad {
            what: "TLS certificate file missing",
            env: changed(
                &[("CT_TLS_CERT_FILE", &missing), ("CT_TLS_KEY_FILE", &key)],
                &[],
            ),
            var: "CT_TLS_CERT_FILE",
            hidden: vec![],
        },
        Bad {
            what: "TLS key file unreadable (a directory)",
            env: changed(
                &[
                    ("CT_TLS_CERT_FILE", &cert),
                    ("CT_TLS_KEY_FILE", &dir_as_key),
                ],
                &[],
            ),
            var: "CT_TLS_KEY_FILE",
            hidden: vec![],
        },
        Bad {
            what: "TLS certificate file holding a key",
            env: changed(
                &[("CT_TLS_CERT_FILE", &key), ("CT_TLS_KEY_FILE", &key)],
                &[],
            ),
            var: "CT_TLS_CERT_FILE",
            // The key's PEM must not be quoted back.
            hidden: vec![pki.key_pem.lines().nth(1).unwrap().to_owned()],
        },
        Bad {
            what: "no SSO and no CT_ALLOW_UNAUTHENTICATED",
            env: changed(&[], &["CT_SSO_AUTHORIZATION_ENDPT"]),
            var: "CT_SSO_AUTHORIZATION_ENDPT",
            hidden: vec![],
        },
        Bad {
            what: "no SSO and CT_ALLOW_UNAUTHENTICATED=false",
            env: changed(
                &[("CT_ALLOW_UNAUTHENTICATED", "false")],
                &["CT_SSO_AUTHORIZATION_ENDPT"],
            ),
            var: "CT_SSO_AUTHORIZATION_ENDPT",
            hidden: vec![],
        },
        Bad {
            what: "plain http provider URL for a non-loopback host",
            env: changed(
                &[("CT_SSO_AUTHORIZATION_ENDPT", "http://idp.example.com")],
                &[],
            ),
            var: "CT_SSO_AUTHORIZATION_ENDPT",
            hidden: vec![],
        },
        Bad {
            what: "unreadable CT_SSO_CA_FILE",
            env: changed(&[("CT_SSO_CA_FILE", &missing)], &[]),
            var: "CT_SSO_CA_FILE",
            hidden: vec![],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_setting_ends_the_binary_with_one_line_naming_the_variable() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let cases = bad_settings(&pki);
    let runs =
        futures_util::future::join_all(cases.iter().map(|b| run(dir.path(), &b.env, &[]))).await;
    for (bad, r) in cases.iter().zip(&runs) {
        assert_refused(bad, r);
    }
    // `check-config` refuses the same settings the same way, before any network.
    let runs = futures_util::future::join_all(
        cases
            .iter()
            .map(|b| run(dir.path(), &b.env, &["check-config"])),
    )
    .await;
    for (bad, r) in cases.iter().zip(&runs) {
        assert_refused(bad, r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_bad_settings_give_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let env = changed(
        &[
            ("CT_SERVER_URL", "http://gate.example.com"),
            ("CT_SSO_PROVIDER", "auth0"),
            ("CT_COOKIE_SECRET", "dG9vLXNob3J0"),
            ("CT_UPSTREAM_URL", "not a url"),
        ],
        &["CT_SSO_CLIENT_ID"],
    );
    let r = run(dir.path(), &env, &[]).await;
    assert!(matches!(r.code, Some(c) if c != 0), "{r:?}");
    r.assert_no_crash();
    r.assert_hides(&SECRETS);
    r.assert_hides(&["dG9vLXNob3J0"]);
    let lines = r.stderr_lines();
    let expected = [
        "CT_SERVER_URL:",
        "CT_UPSTREAM_URL:",
        "CT_COOKIE_SECRET:",
        "CT_SSO_CLIENT_ID:",
        "CT_SSO_PROVIDER:",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for var in expected {
        assert_eq!(
            lines.iter().filter(|l| l.contains(var)).count(),
            1,
            "not exactly one line names {var}: {lines:#?}"
        );
    }
}

/// A configuration `check-config` accepts without any network: no SSO.
pub(super) fn offline(upstream: &str) -> Vec<(String, String)> {
    vars(&[
        ("CT_SERVER_URL", GATE),
        ("CT_UPSTREAM_URL", upstream),
        ("CT_ALLOW_UNAUTHENTICATED", "true"),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotenv_in_the_working_directory_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# written by the operator\nCT_UPSTREAM_URL=http://127.0.0.1:4321\n",
    )
    .unwrap();
    let mut env = offline("unused");
    env.retain(|(k, _)| k != "CT_UPSTREAM_URL");
    let r = run(dir.path(), &env, &["check-config"]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.output().contains("forwards to http://127.0.0.1:4321/"),
        "the .env value was not used: {r:?}"
    );

    // A bad value in .env is reported like one from the environment.
    std::fs::write(dir.path().join(".env"), "CT_UPSTREAM_URL=ftp://files\n").unwrap();
    let r = run(dir.path(), &env, &["check-config"]).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stderr_lines().len(), 1, "{r:?}");
    assert!(r.stderr.contains("CT_UPSTREAM_URL:"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_environment_wins_over_dotenv() {
    let dir = tempfile::tempdir().unwrap();
    // .env sets a bad upstream and a different server URL; the environment
    // sets both as well and must win for each.
    std::fs::write(
        dir.path().join(".env"),
        "CT_UPSTREAM_URL=http://[bad\nCT_SERVER_URL=https://from-dotenv.example.com\nCT_SHUTDOWN_GRACE=7s\n",
    )
    .unwrap();
    let env = offline("http://127.0.0.1:5555");
    let r = run(dir.path(), &env, &["check-config"]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    r.assert_no_crash();
    let out = r.output();
    assert!(
        out.contains(
            "the gate serves https://gate.example.com and forwards to http://127.0.0.1:5555/"
        ),
        "{out}"
    );
    assert!(!out.contains("from-dotenv"), "{out}");

    // And the binary starts with it (variables only .env sets still apply).
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let upstream = Upstream::start().await;
    let env = offline(&upstream.url);
    let gate = Served::start(dir.path(), env, false, &client).await;
    let resp = client.get(gate.url("/via-env")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last_request().unwrap().path(), "/via-env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_against_a_running_provider_prints_the_redirect_uris() {
    let idp = Idp::start(&IdpOptions::new(CLIENT_ID, CLIENT_SECRET, GATE)).await;
    let dir = tempfile::tempdir().unwrap();
    let env = changed(&[("CT_SSO_AUTHORIZATION_ENDPT", &idp.issuer)], &[]);
    let r = run(dir.path(), &env, &["check-config"]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    r.assert_no_crash();
    r.assert_hides(&SECRETS);
    let out = r.output();
    for uri in [
        "https://gate.example.com/sso/authorization-code/callback",
        "https://gate.example.com/sso/logout",
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains("register") && l.trim_end().ends_with(uri)),
            "no line tells to register {uri}:\n{out}"
        );
    }
    assert!(out.contains(&idp.issuer), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_against_a_closed_port_fails_naming_the_provider_variable() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = format!("http://127.0.0.1:{}", free_port());
    let env = changed(&[("CT_SSO_AUTHORIZATION_ENDPT", &issuer)], &[]);
    let started = std::time::Instant::now();
    let r = run(dir.path(), &env, &["check-config"]).await;
    assert!(matches!(r.code, Some(c) if c != 0), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    r.assert_no_crash();
    r.assert_hides(&SECRETS);
    assert!(
        r.stderr_lines()
            .iter()
            .any(|l| l.contains("CT_SSO_AUTHORIZATION_ENDPT")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_dotenv_line_is_reported_by_name_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "CT_SSO_CLIENT_SECRET=\"dotenv-secret-4711\n",
    )
    .unwrap();
    let env = changed(&[], &["CT_SSO_CLIENT_SECRET"]);
    for args in [&[][..], &["check-config"][..]] {
        let r = run(dir.path(), &env, args).await;
        assert!(matches!(r.code, Some(c) if c != 0), "{r:?}");
        r.assert_no_crash();
        r.assert_hides(&SECRETS);
        r.assert_hides(&["dotenv-secret-4711"]);
        assert!(
            r.stderr_lines()
                .iter()
                .any(|l| l.contains(".env:") && l.contains("CT_SSO_CLIENT_SECRET")),
            "no line says the .env line is bad: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_dotenv_ends_the_binary_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".env")).unwrap();
    let r = run(dir.path(), &good(), &[]).await;
    assert!(matches!(r.code, Some(c) if c != 0), "{r:?}");
    r.assert_no_crash();
    r.assert_hides(&SECRETS);
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(".env: cannot be read"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_and_key_that_do_not_match_are_refused_by_start_and_check_config() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut env = changed(
        &[
            ("CT_TLS_CERT_FILE", &pki.cert_file.display().to_string()),
            ("CT_TLS_KEY_FILE", &other.key_file.display().to_string()),
        ],
        &[],
    );
    // No provider is needed to see this: SSO off.
    env.retain(|(k, _)| !k.starts_with("CT_SSO_"));
    env.push(("CT_ALLOW_UNAUTHENTICATED".into(), "true".into()));
    for args in [&[][..], &["check-config"][..]] {
        let r = run(dir.path(), &env, args).await;
        assert!(
            matches!(r.code, Some(c) if c != 0),
            "ssogate {args:?}: {r:?}"
        );
        r.assert_no_crash();
        r.assert_hides(&SECRETS);
        r.assert_hides(&[other.key_pem.lines().nth(1).unwrap()]);
        let lines = r.stderr_lines();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("CT_TLS_KEY_FILE") && l.contains("do not form a usable pair")),
            "ssogate {args:?}: {lines:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_in_use_ends_the_binary_naming_ct_listen_addr() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let env = changed(&[("CT_LISTEN_ADDR", &addr)], &[]);
    let r = run(dir.path(), &env, &[]).await;
    assert!(matches!(r.code, Some(c) if c != 0), "{r:?}");
    r.assert_no_crash();
    r.assert_hides(&SECRETS);
    let lines = r.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("CT_LISTEN_ADDR") && l.contains(&addr)),
        "{lines:#?}"
    );
}
