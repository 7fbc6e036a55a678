//! The one place failures become responses: HTML for browsers, JSON for
//! everything else. Public bodies are generic; details are logged once by
//! the caller, never a token or secret.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};

/// Errors a body may end with (an upstream failure, or its session ending).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: two words, where [`Body`] holds the largest of its kinds.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body type of every response the gate produces or forwards, and of
/// requests it forwards. An upstream's answer is held as it is, without a
/// box of its own; anything else is boxed.
pub enum Body {
    /// An upstream's answer body, as the gate's HTTP/1.1 client reads it.
    Answer(crate::proxy::h1::Answer),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Answer(_) => "Body::Answer",
            Self::Boxed(_) => "Body::Boxed",
        })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::pin::Pin;
        match self.get_mut() {
            Self::Answer(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Answer(b) => b.is_end_stream(),
            Self::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Answer(b) => b.size_hint(),
            Self::Boxed(b) => b.size_hint(),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::boxed(Full::new(bytes.into()).map_err(|never| match never {}))
}

pub fn empty() -> Body {
    Body::boxed(Empty::new().map_err(|never| match never {}))
}

/// Whether the client prefers an HTML page (a browser) to JSON.
pub fn wants_html(headers: &http::HeaderMap) -> bool {
    wants_html_in(crate::fields::Fields::Map(headers))
}

/// [`wants_html`] over header fields in either form.
pub fn wants_html_in(fields: crate::fields::Fields<'_>) -> bool {
    fields
        .values("accept")
        .any(|v| contains_ignore_case(v, b"text/html"))
}

/// ASCII case-insensitive substring search, without allocating.
pub fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// What went wrong, by side.
#[derive(Debug)]
pub enum Failure {
    /// The client sent something unusable.
    BadRequest(String),
    /// A sign-in could not be finished; the user can start again.
    SignIn {
        status: StatusCode,
        reason: String,
    },
    /// The provider is not loaded or not reachable; try again shortly.
    ProviderUnavailable,
    /// The provider answered something the gate cannot use.
    ProviderError(String),
    /// The upstream could not be reached.
    UpstreamUnavailable,
    /// A WebSocket from a page of another origin.
    ForbiddenOrigin,
    NotFound,
    Internal,
}

impl Failure {
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        match self {
            Failure::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", "Bad request", m.clone()),
            Failure::SignIn { status, reason } => (*status, "sign_in_failed", "Sign-in failed", reason.clone()),
            Failure::ProviderUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Sign-in is unavailable",
                "The identity provider cannot be reached right now. Please try again in a moment.".into(),
            ),
            Failure::ProviderError(m) => (StatusCode::BAD_GATEWAY, "provider_error", "Sign-in failed", m.clone()),
            Failure::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "Service unavailable",
                "The application behind this gate is not reachable right now. Please try again in a moment.".into(),
            ),
            Failure::ForbiddenOrigin => (
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "Forbidden",
                "Connections from pages of another site are not allowed.".into(),
            ),
            Failure::NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found", "There is nothing here.".into()),
            Failure::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Something went wrong",
                "The gate could not complete this request.".into(),
            ),
        }
    }

    /// The response for this failure, as a page or as JSON.
    pub fn respond(&self, html: bool) -> Response<Body> {
        let (status, code, title, message) = self.parts();
        let mut resp = if html {
            let action = matches!(
                self,
                Failure::SignIn { .. } | Failure::ProviderUnavailable | Failure::ProviderError(_)
            )
            .then_some(("Sign in again", "/sso/login"));
            page(status, title, &message, action)
        } else {
            json(
                status,
                &serde_json::json!({ "error": code, "error_description": message }),
            )
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

/// 302 to `location` (already validated by the caller).
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 401 for API clients: JSON and a `WWW-Authenticate` challenge.
pub fn unauthorized(invalid_token: bool) -> Response<Body> {
    let description = if invalid_token {
        "the bearer token is not valid"
    } else {
        "sign-in required"
    };
    let mut resp = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": if invalid_token { "invalid_token" } else { "unauthorized" }, "error_description": description }),
    );
    let challenge = if invalid_token {
        HeaderValue::from_static(r#"Bearer realm="ssogate", error="invalid_token""#)
    } else {
        HeaderValue::from_static(r#"Bearer realm="ssogate""#)
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    resp
}

/// A small self-contained HTML page; every inserted string is escaped.
pub fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    action: Option<(&str, &str)>,
) -> Response<Body> {
    let link = action
        .map(|(text, href)| format!(r#"<p><a href="{}">{}</a></p>"#, escape(href), escape(text)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
<meta name=\"viewport\" content=\"width=device-width\"><style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}</style>\
</head><body><h1>{t}</h1><p>{m}</p>{link}</body></html>",
        t = escape(title),
        m = escape(message),
    );
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    resp
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
