//! Provider quirks, each against the fake provider shaped like that
//! provider's published documents (`support::fake_idp::presets`): Entra ID
//! (single- and multi-tenant), AD FS, Okta (org and custom servers), Auth0,
//! Keycloak, a provider without `end_session_endpoint`, and the choice of
//! client authentication.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::browser::{Browser, Page};
use crate::support::certs::TestPki;
use crate::support::fake_idp::{
    ClientAuth, ENTRA_TENANT_ID, FakeIdp, FakeOptions, Preset, SigningKey, groups_overage_claims,
};
use crate::support::fake_rig::Rig;
use crate::support::gate::{CLIENT_ID, Gate, api_client, base_vars, reserve};
use crate::support::upstream::{Recorded, Upstream};

/// Another tenant's id, for tenant restriction.
const OTHER_TENANT: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";

impl Rig {
    /// Signs in from `/app` and returns what the upstream saw.
    async fn sign_in(&self, b: &Browser) -> Recorded {
        let (page, visited) = b.follow(&self.gate.url("/app")).await;
        assert_eq!(page.status, 200, "{visited:?}\n{}", page.body);
        assert!(page.url.ends_with("/app"), "landed on {}", page.url);
        self.upstream
            .last_request()
            .expect("the upstream saw the signed-in request")
    }

    /// Signs in from `/app` and expects the callback to refuse it.
    async fn refused_sign_in(&self, b: &Browser) -> Page {
        let forwarded = self.upstream.requests().len();
        let (page, visited) = b.follow(&self.gate.url("/app")).await;
        assert!(
            (400..500).contains(&page.status),
            "expected a 4xx sign-in failure, got {} at {}: {visited:?}\n{}",
            page.status,
            page.url,
            page.body
        );
        assert!(
            page.url.contains("/sso/authorization-code/callback"),
            "failed elsewhere: {}",
            page.url
        );
        assert_eq!(
            self.upstream.requests().len(),
            forwarded,
            "the upstream saw a request without a session"
        );
        let me = b.get(&self.gate.url("/sso/userinfo")).await;
        assert_eq!(me.status, 401, "a session exists: {}", me.body);
        page
    }
}

fn scope_sent(idp: &FakeIdp) -> String {
    let auth = idp.authorize_log();
    let last = auth.last().expect("an authorization request");
    last.iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

// ------------------------------------------------------------ Microsoft

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_multi_tenant_issuers_are_checked_against_the_users_tenant() {
    for preset in [Preset::EntraCommon, Preset::EntraOrganizations] {
        let rig = Rig::start(preset, &[("CT_SSO_PROVIDER", "microsoft")]).await;
        assert!(rig.idp.issuer.contains("{tenantid}"), "{}", rig.idp.issuer);
        let seen = rig.sign_in(&rig.browser()).await;
        let user = rig.idp.current().user;
        assert_eq!(seen.header("x-forwarded-user"), Some(user.sub.as_str()));
        assert_eq!(
            seen.header("x-forwarded-preferred-username"),
            Some("alice@contoso.example")
        );
        assert_eq!(
            seen.header("x-forwarded-email"),
            None,
            "{preset:?}: Entra sent no email and no fallback is configured"
        );

        // A token whose `iss` names another tenant than its `tid`.
        let other_issuer = format!("{}/{OTHER_TENANT}/v2.0", rig.idp.base);
        rig.idp.set(move |b| {
            let iss = other_issuer.clone();
            b.token_hook = Some(Arc::new(move |d| d.set_claim("iss", iss.clone())));
        });
        let page = rig.refused_sign_in(&rig.browser()).await;
        assert!(page.body.contains("issuer"), "{preset:?}: {}", page.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_template_issuer_without_ct_sso_provider_microsoft_never_becomes_ready() {
    let pki = TestPki::new();
    let upstream = Upstream::start().await;
    let (listener, url) = reserve(true).await;
    let idp = FakeIdp::start(FakeOptions::preset(Preset::EntraCommon, &url)).await;
    let vars = base_vars(&url, &upstream.url, &idp.authority, &pki, true);
    let gate = Gate::start_on(listener, url, vars).await.unwrap();
    let client = api_client(&pki);
    crate::assert_eventually!(
        idp.discovery_fetches() >= 2,
        Duration::from_secs(10),
        "discovery was not retried"
    );
    let ready = client
        .get(gate.url("/sso/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "a template issuer must not be trusted blindly");
    assert_eq!(idp.authorize_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_tenants_let_in_only_those_tenants() {
    let rig = Rig::start(
        Preset::EntraCommon,
        &[
            ("CT_SSO_PROVIDER", "MICROSOFT"),
            ("CT_SSO_ALLOWED_TENANTS", OTHER_TENANT),
        ],
    )
    .await;
    let page = rig.refused_sign_in(&rig.browser()).await;
    assert!(page.body.contains("tenant"), "{}", page.body);

    let rig = Rig::start(
        Preset::EntraCommon,
        &[
            ("CT_SSO_PROVIDER", "MICROSOFT"),
            (
                "CT_SSO_ALLOWED_TENANTS",
                &format!("{OTHER_TENANT}, {}", ENTRA_TENANT_ID.to_uppercase()),
            ),
        ],
    )
    .await;
    rig.sign_in(&rig.browser()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_bearer_tokens_are_checked_against_the_tenant_issuer() {
    let rig = Rig::start(
        Preset::EntraCommon,
        &[
            ("CT_SSO_PROVIDER", "MICROSOFT"),
            ("CT_SSO_ALLOWED_TENANTS", ENTRA_TENANT_ID),
        ],
    )
    .await;
    let now = jsonwebtoken::get_current_timestamp();
    let token = |iss: &str, tid: &str| {
        let Value::Object(header) =
            serde_json::json!({ "alg": "RS256", "kid": SigningKey::Rsa1.default_kid() })
        else {
            unreachable!()
        };
        let Value::Object(claims) = serde_json::json!({
            "iss": iss, "tid": tid, "aud": CLIENT_ID, "sub": "ide-user",
            "iat": now, "exp": now + 600,
        }) else {
            unreachable!()
        };
        rig.idp.sign_jwt(&header, &claims, &SigningKey::Rsa1)
    };
    let client = api_client(&rig.pki);
    let call = |t: String| client.get(rig.gate.url("/api/x")).bearer_auth(t).send();
    let own = format!("{}/{ENTRA_TENANT_ID}/v2.0", rig.idp.base);
    let other = format!("{}/{OTHER_TENANT}/v2.0", rig.idp.base);
    let ok = call(token(&own, ENTRA_TENANT_ID)).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        rig.upstream
            .last_request()
            .unwrap()
            .header("x-forwarded-user"),
        Some("ide-user")
    );
    let before = rig.upstream.requests().len();
    for (what, t) in [
        (
            "iss of another tenant than tid",
            token(&other, ENTRA_TENANT_ID),
        ),
        ("a tenant not allowed", token(&other, OTHER_TENANT)),
        (
            "the template itself",
            token(&rig.idp.issuer, ENTRA_TENANT_ID),
        ),
    ] {
        let resp = call(t).await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
    }
    assert_eq!(rig.upstream.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_email_header_falls_back_to_the_configured_claim() {
    let rig = Rig::start(
        Preset::EntraTenant,
        &[
            ("CT_SSO_PROVIDER", "MICROSOFT"),
            ("CT_SSO_EMAIL_FALLBACK", "upn,preferred_username"),
        ],
    )
    .await;
    let seen = rig.sign_in(&rig.browser()).await;
    assert_eq!(
        seen.header("x-forwarded-email"),
        Some("alice@contoso.example")
    );
    let me = rig.browser();
    rig.sign_in(&me).await;
    let info = me.get(&rig.gate.url("/sso/userinfo")).await.json();
    assert_eq!(info["email"], "alice@contoso.example", "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_overage_claim_does_not_break_sign_in() {
    let rig = Rig::start_with(
        Preset::EntraTenant,
        &[("CT_SSO_PROVIDER", "MICROSOFT")],
        |o| {
            let overage = groups_overage_claims(ENTRA_TENANT_ID, "9d8c7b6a");
            o.behaviour.user.extra.extend(overage);
            o.behaviour
                .user
                .extra
                .insert("hasgroups".into(), Value::Bool(true));
        },
        false,
    )
    .await;
    let seen = rig.sign_in(&rig.browser()).await;
    assert_eq!(
        seen.header("x-forwarded-preferred-username"),
        Some("alice@contoso.example")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adfs_names_users_by_upn_and_is_not_asked_for_offline_access() {
    let rig = Rig::start(Preset::Adfs, &[("CT_SSO_PROVIDER", "MICROSOFT")]).await;
    let seen = rig.sign_in(&rig.browser()).await;
    assert_eq!(
        seen.header("x-forwarded-preferred-username"),
        Some("alice@contoso.example"),
        "from upn"
    );
    let scope = scope_sent(&rig.idp);
    assert!(scope.contains("openid"), "{scope}");
    assert!(
        !scope.contains("offline_access"),
        "AD FS lists no offline_access: {scope}"
    );
}

// ------------------------------------------------------------ Okta

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_org_and_custom_servers_sign_in_with_offline_access() {
    for preset in [Preset::OktaOrg, Preset::OktaCustom] {
        let rig = Rig::start(preset, &[("CT_SSO_PROVIDER", "okta")]).await;
        let seen = rig.sign_in(&rig.browser()).await;
        let sub = rig.idp.current().user.sub;
        assert_eq!(
            seen.header("x-forwarded-user"),
            Some(sub.as_str()),
            "{preset:?}"
        );
        assert!(
            scope_sent(&rig.idp).contains("offline_access"),
            "{preset:?}"
        );
        if preset == Preset::OktaCustom {
            assert!(rig.idp.authority.ends_with("/oauth2/default"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_rotated_refresh_tokens_are_kept_and_used_next_time() {
    let rig = Rig::start_with(
        Preset::OktaCustom,
        &[("CT_SSO_PROVIDER", "OKTA")],
        |o| {
            o.behaviour.id_token_ttl = 4;
            o.behaviour.access_token_ttl = 4;
            o.behaviour.rotate_refresh_tokens = true;
            o.behaviour.id_token_on_refresh = true;
        },
        true,
    )
    .await;
    let b = rig.browser();
    rig.sign_in(&b).await;
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let page = b.get(&rig.gate.url(&format!("/app/{round}"))).await;
        assert_eq!(page.status, 200, "round {round}: {}", page.body);
    }
    let refreshes: Vec<String> = rig
        .idp
        .token_log()
        .iter()
        .filter(|t| t.grant_type.as_deref() == Some("refresh_token"))
        .filter_map(|t| t.field("refresh_token").map(str::to_owned))
        .collect();
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    assert_ne!(
        refreshes[0], refreshes[1],
        "the rotated token was used for the second refresh"
    );
}

// ------------------------------------------------------------ Auth0, Keycloak, logout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth0s_trailing_slash_issuer_matches_with_or_without_the_slash() {
    for slash in ["", "/"] {
        let pki = TestPki::new();
        let upstream = Upstream::start().await;
        let (listener, url) = reserve(true).await;
        let idp = FakeIdp::start(FakeOptions::preset(Preset::Auth0, &url)).await;
        assert!(idp.issuer.ends_with('/'), "{}", idp.issuer);
        let authority = format!("{}{slash}", idp.authority.trim_end_matches('/'));
        let vars = base_vars(&url, &upstream.url, &authority, &pki, true);
        let gate = Gate::start_on(listener, url, vars).await.unwrap();
        let rig = Rig {
            pki,
            upstream,
            idp,
            gate,
        };
        rig.wait_ready().await;
        rig.sign_in(&rig.browser()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_realms_sign_in_and_out_at_the_realms_end_session_endpoint() {
    let rig = Rig::start(Preset::Keycloak, &[]).await;
    assert!(rig.idp.authority.ends_with("/realms/ssogate"));
    let b = rig.browser();
    rig.sign_in(&b).await;
    let page = b.get(&rig.gate.url("/sso/logout")).await;
    assert_eq!(page.status, 302, "{}", page.body);
    let to = page.location().unwrap();
    assert!(
        to.starts_with(
            &rig.idp
                .url("/realms/ssogate/protocol/openid-connect/logout")
        ),
        "{to}"
    );
    assert!(to.contains("id_token_hint="), "{to}");
    assert!(to.contains("post_logout_redirect_uri="), "{to}");
    let me = b.get(&rig.gate.url("/sso/userinfo")).await;
    assert_eq!(me.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_end_session_endpoint_logout_ends_the_local_session_and_says_so() {
    let rig = Rig::start_with(Preset::Generic, &[], |o| o.end_session_path = None, false).await;
    let b = rig.browser();
    rig.sign_in(&b).await;
    let page = b.get(&rig.gate.url("/sso/logout")).await;
    assert_eq!(page.status, 200, "the signed-out page, not a redirect");
    assert!(
        page.body.to_lowercase().contains("signed out"),
        "{}",
        page.body
    );
    assert_eq!(rig.idp.end_session_requests(), 0);
    let me = b.get(&rig.gate.url("/sso/userinfo")).await;
    assert_eq!(me.status, 401);
    let again = b.get(&rig.gate.url("/app")).await;
    assert_eq!(again.status, 302, "signed out: sent to sign in again");
}

// ------------------------------------------------------------ client authentication and skew

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_follows_the_methods_the_provider_lists() {
    for (methods, accepts, expected) in [
        (
            vec!["client_secret_post"],
            ClientAuth::PostOnly,
            "client_secret_post",
        ),
        (
            vec!["client_secret_basic"],
            ClientAuth::BasicOnly,
            "client_secret_basic",
        ),
        (
            vec!["client_secret_post", "client_secret_basic"],
            ClientAuth::Any,
            "client_secret_basic",
        ),
    ] {
        let rig = Rig::start_with(
            Preset::Generic,
            &[],
            |o| {
                o.token_endpoint_auth_methods = methods.iter().map(|m| (*m).to_owned()).collect();
                o.behaviour.client_auth = accepts;
            },
            false,
        )
        .await;
        rig.sign_in(&rig.browser()).await;
        let token = &rig.idp.token_log()[0];
        assert_eq!(token.auth_method, expected, "{methods:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_leeway_refuses_what_the_default_accepts() {
    let skewed = |o: &mut FakeOptions| {
        o.behaviour.token_hook = Some(Arc::new(|d| {
            let now = jsonwebtoken::get_current_timestamp();
            d.set_claim("iat", now + 30);
        }));
    };
    let rig = Rig::start_with(Preset::Generic, &[], skewed, false).await;
    rig.sign_in(&rig.browser()).await;
    let rig = Rig::start_with(Preset::Generic, &[("CT_SSO_LEEWAY", "5s")], skewed, false).await;
    let page = rig.refused_sign_in(&rig.browser()).await;
    assert!(page.body.contains("future"), "{}", page.body);
}

// ------------------------------------------------------------ preflight

/// `ssogate check-config` against a provider shaped like Entra's
/// multi-tenant endpoint: the profile's findings, a token endpoint that
/// differs from discovery, and the URIs to register, one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_each_finding_on_one_line_with_its_fix() {
    use crate::cases::binary::{run, vars};
    let gate = "https://gate.example.com";
    let idp = FakeIdp::start(FakeOptions::preset(Preset::EntraCommon, gate)).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_token = idp.url("/common/oauth2/token");
    let env = vars(&[
        ("CT_SERVER_URL", gate),
        ("CT_UPSTREAM_URL", "http://127.0.0.1:1080"),
        ("CT_SSO_AUTHORIZATION_ENDPT", &idp.authority),
        ("CT_SSO_TOKEN_ENDPT", &wrong_token),
        ("CT_SSO_PROVIDER", "MICROSOFT"),
        ("CT_SSO_CLIENT_ID", CLIENT_ID),
        ("CT_SSO_CLIENT_SECRET", crate::support::gate::CLIENT_SECRET),
        ("CT_COOKIE_SECRET", crate::support::gate::COOKIE_SECRET),
    ]);
    let r = run(dir.path(), &env, &["check-config"]).await;
    assert_eq!(r.code, Some(0), "warnings do not fail the check: {r:?}");
    r.assert_no_crash();
    r.assert_hides(&[crate::support::gate::CLIENT_SECRET]);
    let lines = r.stderr_lines();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    for want in [
        "ok: provider ",
        "warning: the multi-tenant issuer lets users of any Entra tenant sign in; fix: set CT_SSO_ALLOWED_TENANTS",
        "warning: CT_SSO_TOKEN_ENDPT is ",
        "warning: Entra ID often sends no email claim",
        "ok: the provider's clock is within ",
        "ok: register this login redirect URI at the provider: https://gate.example.com/sso/authorization-code/callback",
        "ok: register this logout redirect URI at the provider: https://gate.example.com/sso/logout",
    ] {
        assert!(has(want), "no line starting {want:?}:\n{}", r.stderr);
    }
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "fix: set CT_SSO_TOKEN_ENDPT={}",
            idp.token_endpoint()
        ))),
        "{}",
        r.stderr
    );
}
