//! The fake provider's settings, behaviour, drafts and records: the types
//! tests build and hooks edit.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::jwt::{SigningKey, left_half_hash};
use super::presets::{self, Preset};
use crate::support::certs::TestPki;
use crate::support::gate::{CLIENT_ID, CLIENT_SECRET};

/// Changes an ID token and the token answer around it.
pub type TokenHook = Arc<dyn Fn(&mut IdTokenDraft) + Send + Sync>;
/// Changes a userinfo answer.
pub type UserinfoHook = Arc<dyn Fn(&mut UserinfoDraft) + Send + Sync>;
/// Changes the authorization endpoint's redirect back to the client.
pub type AuthorizeHook = Arc<dyn Fn(&mut AuthorizeDraft) + Send + Sync>;

/// An answer sent as it is, instead of the normal one.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        RawResponse {
            status,
            content_type: content_type.to_owned(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, value: &Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    /// An OAuth error body, e.g. `oauth_error(400, "invalid_grant")`.
    pub fn oauth_error(status: u16, error: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": error }))
    }

    pub fn html(status: u16, html: &str) -> Self {
        Self::new(status, "text/html; charset=utf-8", html)
    }

    /// A syntactically valid JSON object of about `bytes` bytes.
    pub fn large_json(bytes: usize) -> Self {
        let filler = "x".repeat(bytes.saturating_sub(16));
        Self::new(
            200,
            "application/json",
            format!("{{\"filler\":\"{filler}\"}}"),
        )
    }
}

/// Which client authentication the token endpoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic` or `client_secret_post` (what real providers do).
    Any,
    /// Only the `Authorization: Basic` header; form credentials get 401 `invalid_client`.
    BasicOnly,
    /// Only `client_id`/`client_secret` form fields; a Basic header gets 401 `invalid_client`.
    PostOnly,
}

/// One entry of the published JWKS.
#[derive(Clone, Debug)]
pub struct PublishedKey {
    pub key: SigningKey,
    /// `None`: published without `kid` (and tokens signed with it carry none).
    pub kid: Option<String>,
    /// `None`: published without `alg` (as Entra ID does).
    pub alg: Option<String>,
    /// `None`: published without `use`.
    pub use_: Option<String>,
    /// Further members (`x5t`, Entra's `issuer`, …); `{base}` is replaced.
    pub extra: Map<String, Value>,
}

impl PublishedKey {
    /// The key with its default kid and alg, `use: sig`.
    pub fn new(key: SigningKey) -> Self {
        PublishedKey {
            kid: key.default_kid().map(str::to_owned),
            alg: Some(key.default_alg().to_owned()),
            use_: Some("sig".to_owned()),
            key,
            extra: Map::new(),
        }
    }

    pub fn kid(mut self, kid: Option<&str>) -> Self {
        self.kid = kid.map(str::to_owned);
        self
    }

    pub fn alg(mut self, alg: Option<&str>) -> Self {
        self.alg = alg.map(str::to_owned);
        self
    }
}

/// Who the authorization endpoint signs in.
#[derive(Clone, Debug)]
pub struct FakeUser {
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
    pub upn: Option<String>,
    /// Entra tenant id: fills `{tenantid}` in a multi-tenant issuer.
    pub tid: Option<String>,
    /// Further ID token claims (`email_verified`, `oid`, `ver`, …).
    pub extra: Map<String, Value>,
}

impl FakeUser {
    /// `login` as the real provider's users look: sub `login`, email
    /// `login@example.com`, name `Login Example`, preferred_username `login`.
    pub fn new(login: &str) -> Self {
        let mut name: Vec<char> = login.chars().collect();
        if let Some(c) = name.first_mut() {
            *c = c.to_ascii_uppercase();
        }
        FakeUser {
            sub: login.to_owned(),
            email: Some(format!("{login}@example.com")),
            name: Some(format!("{} Example", name.into_iter().collect::<String>())),
            preferred_username: Some(login.to_owned()),
            upn: None,
            tid: None,
            extra: Map::new(),
        }
    }
}

/// How the provider behaves; change it while it runs with [`FakeIdp::set`].
#[derive(Clone)]
pub struct Behaviour {
    pub user: FakeUser,
    /// The served discovery document (replaced at start by the one built
    /// from the options; edit it afterwards to change what is served).
    pub discovery: Map<String, Value>,
    /// Served instead of the discovery document.
    pub discovery_response: Option<RawResponse>,
    pub keys: Vec<PublishedKey>,
    /// Served instead of the JWKS.
    pub jwks_response: Option<RawResponse>,
    /// `(error, error_description)`: the authorization endpoint redirects
    /// back with this error instead of a code.
    pub authorize_error: Option<(String, String)>,
    /// Add `iss` (RFC 9207) to the authorization response.
    pub authorize_iss: bool,
    pub authorize_hook: Option<AuthorizeHook>,
    /// Refuse an authorization request without an S256 challenge.
    pub require_pkce: bool,
    pub client_auth: ClientAuth,
    /// Key of the default ID token (header `kid` as published for it).
    pub signing_key: SigningKey,
    /// Seconds.
    pub id_token_ttl: u64,
    /// Seconds (`expires_in`).
    pub access_token_ttl: u64,
    pub issue_refresh_tokens: bool,
    /// A used refresh token is spent; reusing it gets `invalid_grant`.
    pub rotate_refresh_tokens: bool,
    /// Answer a refresh with a new ID token (without `nonce`).
    pub id_token_on_refresh: bool,
    /// Put `azp` (the client id) in ID tokens.
    pub azp: bool,
    pub token_hook: Option<TokenHook>,
    /// Wait this long before answering the token endpoint.
    pub token_delay: Option<Duration>,
    /// Merged into every userinfo answer (e.g. [`groups_overage_claims`]).
    pub userinfo_claims: Map<String, Value>,
    pub userinfo_hook: Option<UserinfoHook>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            user: FakeUser::new("alice"),
            discovery: Map::new(),
            discovery_response: None,
            keys: vec![PublishedKey::new(SigningKey::Rsa1)],
            jwks_response: None,
            authorize_error: None,
            authorize_iss: false,
            authorize_hook: None,
            require_pkce: false,
            client_auth: ClientAuth::Any,
            signing_key: SigningKey::Rsa1,
            id_token_ttl: 3600,
            access_token_ttl: 3600,
            issue_refresh_tokens: true,
            rotate_refresh_tokens: false,
            id_token_on_refresh: true,
            azp: false,
            token_hook: None,
            token_delay: None,
            userinfo_claims: Map::new(),
            userinfo_hook: None,
        }
    }
}

/// Which grant a token answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
}

/// A token answer before it is sent: edit it in a [`TokenHook`].
#[derive(Clone, Debug)]
pub struct IdTokenDraft {
    pub grant: Grant,
    /// JOSE header (`alg`, `typ`, `kid`).
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub key: SigningKey,
    pub corrupt_signature: bool,
    /// Send the answer without `id_token`.
    pub omit_id_token: bool,
    /// The rest of the answer: `access_token`, `token_type`, `expires_in`,
    /// `refresh_token`, `scope` (`id_token` is added after signing).
    pub response: Map<String, Value>,
    /// Sent instead of the whole answer.
    pub raw_response: Option<RawResponse>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

impl IdTokenDraft {
    /// Signs with `key`, setting the header's `alg` (and `kid` to the key's
    /// default one, or none).
    pub fn sign_with(&mut self, key: SigningKey) {
        self.header
            .insert("alg".into(), Value::from(key.default_alg()));
        match key.default_kid() {
            Some(kid) => self.header.insert("kid".into(), Value::from(kid)),
            None => self.header.remove("kid"),
        };
        self.key = key;
    }

    pub fn set_claim(&mut self, name: &str, value: impl Into<Value>) {
        self.claims.insert(name.to_owned(), value.into());
    }

    pub fn remove_claim(&mut self, name: &str) {
        self.claims.remove(name);
    }

    /// The access token of the answer.
    pub fn access_token(&self) -> Option<&str> {
        self.response.get("access_token").and_then(Value::as_str)
    }

    /// Recomputes `at_hash` for the answer's (possibly changed) access
    /// token and the header's `alg`.
    pub fn recompute_at_hash(&mut self) {
        let alg = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("RS256")
            .to_owned();
        if let Some(at) = self.access_token().map(str::to_owned) {
            self.set_claim("at_hash", left_half_hash(&at, &alg));
        }
    }
}

/// A userinfo answer before it is sent.
#[derive(Clone, Debug)]
pub struct UserinfoDraft {
    pub claims: Map<String, Value>,
    pub raw_response: Option<RawResponse>,
}

/// The authorization endpoint's redirect before it is sent.
#[derive(Clone, Debug)]
pub struct AuthorizeDraft {
    /// The query of the authorization request.
    pub request: Vec<(String, String)>,
    /// Where the browser is sent back to.
    pub redirect_uri: String,
    /// Query parameters added to `redirect_uri` (`code`, `state`, `iss`, …).
    pub params: Vec<(String, String)>,
    pub raw_response: Option<RawResponse>,
}

/// One request to the token endpoint, as received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    /// `client_secret_basic`, `client_secret_post`, `both` or `none`.
    pub auth_method: &'static str,
    pub form: Vec<(String, String)>,
}

impl TokenRequest {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Settings fixed for a run; build with [`FakeOptions::new`] or
/// [`FakeOptions::preset`] and adjust fields.
#[derive(Clone)]
pub struct FakeOptions {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub preset: Preset,
    /// Loopback address to bind. Default `127.0.0.1`.
    pub host: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where the discovery document is served: `{base}{issuer_path}/.well-known/openid-configuration`
    /// (`""` for the root).
    pub issuer_path: String,
    /// The `issuer` the document names (`{base}` replaced); may differ from
    /// where it is served (Entra's `{tenantid}` template, Auth0's trailing slash).
    pub issuer: String,
    /// Endpoint paths below `{base}`.
    pub authorization_path: String,
    pub token_path: String,
    pub jwks_path: String,
    pub userinfo_path: Option<String>,
    pub end_session_path: Option<String>,
    pub token_endpoint_auth_methods: Vec<String>,
    pub id_token_signing_algs: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub response_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    /// Merged into the document last (`{base}` replaced in strings).
    pub extra: Map<String, Value>,
    /// The behaviour at start.
    pub behaviour: Behaviour,
}

impl FakeOptions {
    /// A plain provider ([`Preset::Generic`]) with one confidential client
    /// whose redirect URI is `<gate>/sso/authorization-code/callback` and
    /// post-logout redirect URI `<gate>/sso/logout`.
    pub fn new(client_id: &str, client_secret: &str, gate_base_url: &str) -> FakeOptions {
        let gate = gate_base_url.trim_end_matches('/');
        let mut opts = FakeOptions {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: vec![format!("{gate}/sso/authorization-code/callback")],
            post_logout_redirect_uris: vec![format!("{gate}/sso/logout")],
            preset: Preset::Generic,
            host: "127.0.0.1".to_owned(),
            tls: None,
            issuer_path: String::new(),
            issuer: String::new(),
            authorization_path: String::new(),
            token_path: String::new(),
            jwks_path: String::new(),
            userinfo_path: None,
            end_session_path: None,
            token_endpoint_auth_methods: Vec::new(),
            id_token_signing_algs: Vec::new(),
            scopes_supported: Vec::new(),
            response_types_supported: Vec::new(),
            subject_types_supported: Vec::new(),
            extra: Map::new(),
            behaviour: Behaviour::default(),
        };
        presets::apply(&mut opts, Preset::Generic);
        opts
    }

    /// `preset` for the test client ([`CLIENT_ID`], [`CLIENT_SECRET`]) of a gate at `gate_base_url`.
    pub fn preset(preset: Preset, gate_base_url: &str) -> FakeOptions {
        Self::new(CLIENT_ID, CLIENT_SECRET, gate_base_url).with_preset(preset)
    }

    /// Replaces the document shape, paths, user and keys with `preset`'s.
    pub fn with_preset(mut self, preset: Preset) -> FakeOptions {
        self.behaviour = Behaviour::default();
        self.extra = Map::new();
        presets::apply(&mut self, preset);
        self
    }

    /// Serves HTTPS with `pki`'s leaf (valid for `127.0.0.1`); give the gate
    /// `CT_SSO_CA_FILE=pki.ca_file`.
    pub fn with_tls(mut self, pki: &TestPki) -> FakeOptions {
        self.tls = Some(pki.rustls_server_config(&["http/1.1"]));
        self
    }
}
