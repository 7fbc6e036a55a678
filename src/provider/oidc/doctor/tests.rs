use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, jwk::Jwk};
use openidconnect::ProviderMetadataWithLogout;
use openidconnect::core::CoreJsonWebKeySet;
use serde_json::{Value, json};
use url::Url;

use super::*;
use crate::config::Secret;
use crate::provider::oidc::discovery;

fn settings(issuer: &str, quirks: Quirks) -> Settings {
    Settings {
        id: "oidc".into(),
        issuer: Url::parse(issuer).unwrap(),
        token_endpoint: Some(Url::parse(&format!("{issuer}/token")).unwrap()),
        client_id: "gate".into(),
        client_secret: Secret::new("s3cret".into()),
        quirks,
        scopes: vec!["openid".into(), "profile".into(), "offline_access".into()],
        ca_pem: None,
        leeway: Duration::from_secs(60),
        allowed_tenants: Vec::new(),
        email_fallback: Vec::new(),
    }
}

fn jwks() -> Value {
    let key = rcgen::KeyPair::generate().unwrap();
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    json!({ "keys": [jwk] })
}

fn loaded(s: &Settings, doc_issuer: &str, edit: impl FnOnce(&mut Value)) -> (Loaded, Value) {
    let mut doc = json!({
        "issuer": doc_issuer,
        "authorization_endpoint": format!("{}/authorize", s.issuer_str()),
        "token_endpoint": format!("{}/token", s.issuer_str()),
        "jwks_uri": format!("{}/keys", s.issuer_str()),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "profile", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
    });
    edit(&mut doc);
    let meta: ProviderMetadataWithLogout = serde_json::from_value(doc.clone()).unwrap();
    let keys: CoreJsonWebKeySet = serde_json::from_value(jwks()).unwrap();
    let l = discovery::build(s, meta.set_jwks(keys), "https://gate.example.com/cb").unwrap();
    (l, doc)
}

fn lines(f: &[Finding]) -> Vec<String> {
    f.iter().map(ToString::to_string).collect()
}

#[test]
fn a_matching_provider_gives_only_ok_lines() {
    let s = settings("https://idp.example.com", Quirks::Generic);
    let l = loaded(&s, "https://idp.example.com", |_| {});
    let f = findings(&s, &l.0, &l.1, Some(3));
    assert!(f.iter().all(|x| x.level == Level::Ok), "{:#?}", lines(&f));
    assert!(lines(&f).iter().any(|l| l.contains("within 3 s")));
}

#[test]
fn each_mismatch_is_one_line_with_its_fix() {
    let mut s = settings("https://idp.example.com", Quirks::Generic);
    s.token_endpoint = Some(Url::parse("https://idp.example.com/oauth/other").unwrap());
    s.scopes.retain(|x| x != "offline_access");
    let l = loaded(&s, "https://idp.example.com", |d| {
        d["code_challenge_methods_supported"] = json!(["plain"]);
        d["token_endpoint_auth_methods_supported"] = json!(["private_key_jwt"]);
        d["grant_types_supported"] = json!(["authorization_code"]);
    });
    let out = lines(&findings(&s, &l.0, &l.1, Some(-600)));
    for want in [
        "warning: CT_SSO_TOKEN_ENDPT is https://idp.example.com/oauth/other, but the discovery document's token_endpoint is https://idp.example.com/token; fix: set CT_SSO_TOKEN_ENDPT=https://idp.example.com/token",
        "warning: refresh is on but CT_SSO_SCOPES lacks offline_access",
        "warning: the provider does not list the refresh_token grant",
        "error: the provider does not list PKCE S256",
        "error: the provider lists neither client_secret_basic nor client_secret_post",
        "error: the provider's clock is 600 s behind this machine's, more than CT_SSO_LEEWAY (60 s)",
    ] {
        assert!(out.iter().any(|l| l.starts_with(want)), "{want}\n{out:#?}");
    }
    assert!(out.iter().all(|l| !l.contains('\n')));
    assert!(
        out.iter()
            .filter(|l| !l.starts_with("ok:"))
            .all(|l| l.contains("; fix: ")),
        "{out:#?}"
    );
}

#[test]
fn provider_profiles_are_checked() {
    let entra = "https://login.microsoftonline.com/common/v2.0";
    let mut s = settings(entra, Quirks::Microsoft);
    let l = loaded(
        &s,
        "https://login.microsoftonline.com/{tenantid}/v2.0",
        |_| {},
    );
    let out = lines(&findings(&s, &l.0, &l.1, None));
    assert!(
        out.iter().any(|l| l.starts_with(
            "warning: the multi-tenant issuer lets users of any Entra tenant sign in"
        )),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l.contains("CT_SSO_EMAIL_FALLBACK")),
        "{out:#?}"
    );
    s.allowed_tenants = vec!["9188040d-6c67-4c5b-b112-36a304b66dad".into()];
    s.email_fallback = vec!["upn".into()];
    let out = lines(&findings(&s, &l.0, &l.1, None));
    assert!(out.iter().all(|l| !l.starts_with("warning:")), "{out:#?}");

    let generic = settings(
        "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
        Quirks::Generic,
    );
    let l = loaded(&generic, generic.issuer.as_str(), |_| {});
    let out = lines(&findings(&generic, &l.0, &l.1, None));
    assert!(
        out.iter()
            .any(|l| l.ends_with("fix: set CT_SSO_PROVIDER=MICROSOFT")),
        "{out:#?}"
    );

    let ms = settings("https://idp.example.com", Quirks::Microsoft);
    let l = loaded(&ms, "https://idp.example.com", |_| {});
    let out = lines(&findings(&ms, &l.0, &l.1, None));
    assert!(
        out.iter()
            .any(|l| l.contains("looks like neither Entra ID nor AD FS")),
        "{out:#?}"
    );

    let adfs = settings("https://fs.contoso.example/adfs", Quirks::Microsoft);
    let l = loaded(&adfs, "https://fs.contoso.example/adfs", |d| {
        d["scopes_supported"] = json!(["openid", "profile"]);
    });
    let out = lines(&findings(&adfs, &l.0, &l.1, None));
    assert!(out.iter().all(|l| !l.starts_with("warning:")), "{out:#?}");
    assert!(
        out.iter().any(|l| l.contains("does not request it")),
        "{out:#?}"
    );
}
