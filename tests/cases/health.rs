//! Health and readiness: a provider that is down at start, a provider behind
//! a private CA, and the unauthenticated mode with no provider at all.

use std::time::{Duration, Instant};

use crate::support::browser::Browser;
use crate::support::certs::TestPki;
use crate::support::gate::{
    CLIENT_ID, CLIENT_SECRET, COOKIE_SECRET, Gate, api_client, base_vars, init_logs, override_vars,
    reserve,
};
use crate::support::idp::{Idp, IdpOptions};
use crate::support::upstream::Upstream;

async fn status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Signs `user` in through `gate` and checks the upstream saw who it was.
async fn assert_sign_in_works(b: &Browser, gate: &Gate, upstream: &Upstream, user: &str) {
    let page = b
        .sign_in(&gate.url("/after/sign-in"), user, &format!("{user}-pass"))
        .await;
    assert_eq!(page.status, 200, "{} {}", page.url, page.body);
    assert!(
        page.url.ends_with("/after/sign-in"),
        "landed on {}",
        page.url
    );
    let seen = upstream
        .last_request()
        .expect("the upstream saw the request");
    assert_eq!(seen.path(), "/after/sign-in");
    assert_eq!(seen.header("x-forwarded-user"), Some(user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_start_is_waited_for_and_then_sign_in_works() {
    init_logs();
    let pki = TestPki::new();
    let upstream = Upstream::start().await;
    // The provider's port, with nothing listening on it yet.
    let idp_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let (listener, url) = reserve(true).await;
    let vars = base_vars(&url, &upstream.url, &issuer, &pki, true);
    let gate = Gate::start_on(listener, url.clone(), vars).await.unwrap();
    let api = api_client(&pki);

    assert_eq!(status(&api, &gate.url("/sso/readyz")).await, Some(503));
    let ready = api.get(gate.url("/sso/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(status(&api, &gate.url("/sso/healthz")).await, Some(200));

    // A sign-in attempt gets a page saying so, not a crash or a hang.
    let b = Browser::new(Some(&pki.ca_pem));
    let page = b.get(&gate.url("/sso/login?rd=/after/sign-in")).await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(
        page.body.contains("Sign-in is unavailable"),
        "{}",
        page.body
    );
    // An API client gets JSON.
    let resp = api.get(gate.url("/sso/login")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body.is_object(), "{body}");
    // A navigation to the application still goes to the sign-in route.
    let page = b.get(&gate.url("/app")).await;
    assert_eq!(page.status, 302);
    assert!(upstream.requests().is_empty(), "the upstream saw a request");
    assert_eq!(status(&api, &gate.url("/sso/healthz")).await, Some(200));

    // Now the provider comes up on that port.
    let mut opts = IdpOptions::new(CLIENT_ID, CLIENT_SECRET, &url);
    opts.port = idp_port;
    let idp = Idp::start(&opts).await;
    assert_eq!(idp.issuer, issuer);
    let up = Instant::now();
    crate::assert_eventually!(
        status(&api, &gate.url("/sso/readyz")).await == Some(200),
        Duration::from_secs(10),
        "the gate was not ready within 10 s of the provider coming up"
    );
    eprintln!("ready {:?} after the provider came up", up.elapsed());
    assert_sign_in_works(&b, &gate, &upstream, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_a_private_ca_needs_ct_sso_ca_file() {
    init_logs();
    let pki = TestPki::new();
    let upstream = Upstream::start().await;
    let (with_listener, with_url) = reserve(true).await;
    let (without_listener, without_url) = reserve(true).await;
    let mut opts = IdpOptions::new(CLIENT_ID, CLIENT_SECRET, &with_url);
    opts.redirect_uris
        .push(format!("{without_url}/sso/authorization-code/callback"));
    opts.tls = Some((pki.cert_file.clone(), pki.key_file.clone()));
    let idp = Idp::start(&opts).await;
    assert!(idp.issuer.starts_with("https://"), "{}", idp.issuer);

    let mut vars = base_vars(&with_url, &upstream.url, &idp.issuer, &pki, true);
    override_vars(
        &mut vars,
        vec![("CT_SSO_CA_FILE".into(), pki.ca_file.display().to_string())],
    );
    let with_ca = Gate::start_on(with_listener, with_url, vars).await.unwrap();
    let vars = base_vars(&without_url, &upstream.url, &idp.issuer, &pki, true);
    let without_ca = Gate::start_on(without_listener, without_url, vars)
        .await
        .unwrap();
    let api = api_client(&pki);

    crate::assert_eventually!(
        status(&api, &with_ca.url("/sso/readyz")).await == Some(200),
        Duration::from_secs(20),
        "the gate with CT_SSO_CA_FILE never became ready"
    );
    let b = Browser::new(Some(&pki.ca_pem));
    assert_sign_in_works(&b, &with_ca, &upstream, "bob").await;

    // Started at the same time, the gate without the CA has tried the
    // provider several times by now (at 0 s, 1 s, 3 s): it stays not ready.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        assert_eq!(
            status(&api, &without_ca.url("/sso/readyz")).await,
            Some(503),
            "a gate that does not trust the provider's CA became ready"
        );
        assert_eq!(
            status(&api, &without_ca.url("/sso/healthz")).await,
            Some(200)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = Browser::new(Some(&pki.ca_pem))
        .get(&without_ca.url("/sso/login"))
        .await;
    assert_eq!(page.status, 503, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_mode_forwards_without_identity_and_strips_forged_headers() {
    init_logs();
    let upstream = Upstream::start().await;
    let (listener, url) = reserve(false).await;
    let vars: Vec<(String, String)> = [
        ("CT_SERVER_URL", url.as_str()),
        ("CT_UPSTREAM_URL", upstream.url.as_str()),
        ("CT_ALLOW_UNAUTHENTICATED", "true"),
        ("CT_COOKIE_SECRET", COOKIE_SECRET),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let gate = Gate::start_on(listener, url, vars).await.unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    assert_eq!(
        status(&client, &gate.url("/sso/readyz")).await,
        Some(200),
        "nothing to load: ready at once"
    );
    assert_eq!(status(&client, &gate.url("/sso/healthz")).await, Some(200));

    // A browser navigation and an API call both reach the upstream.
    let resp = client
        .get(gate.url("/app/page?x=1"))
        .header("accept", "text/html")
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-email", "mallory@evil.example")
        .header("x-forwarded-preferred-username", "mallory")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path_and_query, "/app/page?x=1");
    for name in [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
    ] {
        assert!(
            seen.header_all(name).is_empty(),
            "{name} reached the upstream: {:?}",
            seen.header_all(name)
        );
    }
    let xff = seen.header_all("x-forwarded-for").join(",");
    assert!(
        !xff.contains("6.6.6.6"),
        "forged X-Forwarded-For kept: {xff}"
    );
    assert!(xff.contains("127.0.0.1"), "X-Forwarded-For: {xff}");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    let resp = client
        .post(gate.url("/api/items"))
        .header("X-Forwarded-User", "admin")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_len, 2);
    assert!(seen.header_all("x-forwarded-user").is_empty());
    assert_eq!(upstream.requests().len(), 2);
}
