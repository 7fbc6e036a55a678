//! What the gate writes to its log, as an operator collects it: the real
//! binary with `CT_LOG_FORMAT=json`, through a full sign-in, refreshes, a
//! bearer call and a sign-out. One JSON object per line, a request line
//! with method, path (no query), status, latency and `sub`, and never a
//! token, code, secret or cookie value.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::cases::binary::{Served, free_port, vars};
use crate::support::browser::Browser;
use crate::support::certs::TestPki;
use crate::support::fake_idp::{FakeIdp, FakeOptions, Preset, SigningKey, sign_compact};
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, api_client};
use crate::support::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_show_every_request_and_no_token_code_secret_or_cookie() {
    let pki = TestPki::new();
    let upstream = Upstream::start().await;
    let port = free_port();
    let gate_url = format!("https://localhost:{port}");
    let mut opts = FakeOptions::preset(Preset::Generic, &gate_url);
    opts.behaviour.id_token_ttl = 4;
    opts.behaviour.access_token_ttl = 4;
    opts.behaviour.rotate_refresh_tokens = true;
    opts.behaviour.id_token_on_refresh = true;
    let idp = FakeIdp::start(opts).await;
    // Every ID token the provider signs, to look for in the log.
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = issued.clone();
    idp.set(move |b| {
        b.token_hook = Some(Arc::new(move |d| {
            let t = sign_compact(&d.header, &d.claims, &d.key, CLIENT_SECRET, false);
            log.lock().unwrap().push(t);
        }));
    });
    let dir = tempfile::tempdir().unwrap();
    let env = vars(&[
        ("CT_UPSTREAM_URL", &upstream.url),
        ("CT_SSO_AUTHORIZATION_ENDPT", &idp.authority),
        ("CT_SSO_TOKEN_ENDPT", &idp.token_endpoint()),
        ("CT_SSO_CLIENT_ID", CLIENT_ID),
        ("CT_SSO_CLIENT_SECRET", CLIENT_SECRET),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
        ("CT_TLS_CERT_FILE", &pki.cert_file.display().to_string()),
        ("CT_TLS_KEY_FILE", &pki.key_file.display().to_string()),
        ("CT_LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ]);
    let client = api_client(&pki);
    let gate = Served::start_on(port, dir.path(), env, true, &client).await;
    crate::assert_eventually!(
        client
            .get(gate.url("/sso/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200),
        Duration::from_secs(20),
        "never ready:\n{}",
        gate.output()
    );

    // Sign in, use the session across two refreshes, sign out.
    let b = Browser::new(Some(&pki.ca_pem));
    let (page, visited) = b.follow(&gate.url("/app/start?secret-query=1")).await;
    assert_eq!(page.status, 200, "{visited:?}\n{}", page.body);
    let cookies: Vec<String> = b
        .cookies_for(&gate.url("/"))
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.len() >= 16)
        .collect();
    assert!(!cookies.is_empty(), "no session cookie to look for");
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let page = b.get(&gate.url(&format!("/app/{round}"))).await;
        assert_eq!(page.status, 200, "{}", page.body);
    }
    let refreshes = idp
        .token_log()
        .iter()
        .filter(|t| t.grant_type.as_deref() == Some("refresh_token"))
        .count();
    assert!(refreshes >= 1, "no refresh happened");
    // A bearer call and a refused one.
    let now = jsonwebtoken::get_current_timestamp();
    let Value::Object(header) =
        serde_json::json!({"alg": "RS256", "kid": SigningKey::Rsa1.default_kid()})
    else {
        unreachable!()
    };
    let Value::Object(claims) = serde_json::json!({
        "iss": idp.issuer, "aud": CLIENT_ID, "sub": "ide-user", "iat": now, "exp": now + 300,
    }) else {
        unreachable!()
    };
    let bearer = idp.sign_jwt(&header, &claims, &SigningKey::Rsa1);
    let resp = client
        .get(gate.url("/api/bearer"))
        .bearer_auth(&bearer)
        .header("x-request-id", "trace-abc-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-1", "echoed");
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        seen.header("x-request-id"),
        Some("trace-abc-1"),
        "passed on"
    );
    let forged = format!("{bearer}x");
    let resp = client
        .get(gate.url("/api/forged"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let out = b.get(&gate.url("/sso/logout")).await;
    assert!(out.status == 302 || out.status == 200, "{}", out.body);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let output = gate.output();
    // Nothing secret, in any form.
    let mut secrets: Vec<(String, &str)> = vec![
        (CLIENT_SECRET.to_owned(), "the client secret"),
        (COOKIE_SECRET.to_owned(), "the cookie secret"),
        (bearer.clone(), "a bearer token"),
    ];
    for t in issued.lock().unwrap().iter() {
        secrets.push((t.clone(), "an ID token"));
        // The signature alone is as good a fingerprint.
        secrets.push((
            t.rsplit('.').next().unwrap().to_owned(),
            "an ID token's signature",
        ));
    }
    for req in idp.token_log() {
        for field in ["code", "refresh_token", "code_verifier", "client_secret"] {
            if let Some(v) = req.field(field) {
                secrets.push((v.to_owned(), field));
            }
        }
    }
    for auth in idp.authorize_log() {
        for (k, v) in auth {
            if k == "state" || k == "nonce" || k == "code_challenge" {
                secrets.push((v, "a sign-in parameter"));
            }
        }
    }
    for c in &cookies {
        secrets.push((c.clone(), "a cookie value"));
    }
    for (value, what) in &secrets {
        assert!(
            value.len() < 8 || !output.contains(value.as_str()),
            "the log shows {what}:\n{output}"
        );
    }
    assert!(
        !output.contains("eyJ"),
        "a JWT-looking value is logged:\n{output}"
    );
    assert!(!output.contains("secret-query"), "a query string is logged");

    // One JSON object per line; a request line for each request.
    let lines: Vec<Value> = output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request" && l["fields"]["status"].is_u64())
        .collect();
    let find = |path: &str| {
        requests
            .iter()
            .find(|l| l["span"]["path"] == path)
            .unwrap_or_else(|| panic!("no request line for {path}:\n{output}"))
    };
    let app = find("/app/0");
    assert_eq!(app["span"]["method"], "GET");
    assert_eq!(app["fields"]["status"], 200);
    assert!(app["fields"]["latency_us"].is_u64(), "{app}");
    assert!(app["span"]["sub"].is_string(), "the user is named: {app}");
    assert_eq!(find("/app/start")["fields"]["status"], 302);
    assert_eq!(find("/api/bearer")["span"]["sub"], "ide-user");
    assert_eq!(find("/api/bearer")["span"]["request_id"], "trace-abc-1");
    let made = find("/app/0")["span"]["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(made.len(), 32, "a generated id: {made:?}");
    assert!(
        upstream
            .requests()
            .iter()
            .any(|r| r.header("x-request-id") == Some(made.as_str())),
        "the upstream saw the generated id"
    );
    assert_eq!(find("/api/forged")["fields"]["status"], 401);
    assert!(
        find("/sso/logout")["span"]["sub"].is_string(),
        "sign-out names the user"
    );
    // Audit lines name the user.
    for event in ["signed in", "signed out"] {
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == event && l["fields"]["sub"].is_string()),
            "no `{event}` audit line with sub:\n{output}"
        );
    }
}

/// Text lines, as an operator reads them: a warning logged while a request
/// is handled names that request, the request's own line follows, and
/// `ssogate::request=warn` drops only the request lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_in_a_request_name_it_and_its_target_filters_only_request_lines() {
    // No upstream on this port: the gate warns inside the request.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let start = async |filter: &str| {
        let dir = tempfile::tempdir().unwrap();
        let env = vars(&[
            ("CT_UPSTREAM_URL", &closed),
            ("CT_ALLOW_UNAUTHENTICATED", "true"),
            ("CT_COOKIE_SECRET", COOKIE_SECRET),
            ("RUST_LOG", filter),
        ]);
        let gate = Served::start(dir.path(), env, false, &client).await;
        let resp = client
            .get(gate.url("/down/x?secret-query=1"))
            .header("x-request-id", "t-1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        crate::assert_eventually!(
            gate.output().contains("upstream unavailable"),
            Duration::from_secs(5),
            "no warning:\n{}",
            gate.output()
        );
        (gate, dir)
    };

    let (gate, _dir) = start("info").await;
    crate::assert_eventually!(
        gate.output().contains("request status=502"),
        Duration::from_secs(5),
        "no request line:\n{}",
        gate.output()
    );
    let output = gate.output();
    let context = r#"request{method="GET" path="/down/x" request_id="t-1"}:"#;
    let warning = output
        .lines()
        .find(|l| l.contains("upstream unavailable"))
        .unwrap();
    assert!(
        warning.contains(&format!("  WARN {context} upstream unavailable error=")),
        "{warning}"
    );
    let line = output
        .lines()
        .find(|l| l.contains("request status=502"))
        .unwrap();
    assert!(
        line.contains(&format!("  INFO {context} request status=502 latency_us=")),
        "{line}"
    );
    assert!(!output.contains("secret-query"), "a query string is logged");

    let (quiet, _dir) = start("info,ssogate::request=warn").await;
    // The warning is out; a request line would have been written before it
    // by the time the thread ran out of work — give it that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let output = quiet.output();
    assert!(output.contains("ssogate serving"), "{output}");
    assert!(
        output.contains(&format!("  WARN {context} upstream unavailable")),
        "the warning still names the request:\n{output}"
    );
    assert!(
        !output.contains(" request status="),
        "request lines are filtered out:\n{output}"
    );
}
