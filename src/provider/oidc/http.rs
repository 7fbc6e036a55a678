//! The HTTP client the gate uses to talk to a provider: no redirects (SSRF),
//! bounded time, answers bounded in size ([`MAX_BODY`]: a provider that
//! sends a multi-megabyte token cannot make the gate buffer it), and the
//! extra CA bundle of `CT_SSO_CA_FILE`.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

use super::super::ProviderError;

pub const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from a provider (discovery, keys, tokens, userinfo).
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Transport(String),
    #[error("the answer is larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// A provider-facing client; cheap to clone.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    /// Counts key-set fetches (`ssogate_jwks_fetches_total`).
    pub jwks_fetches: metrics::Counter,
}

impl Http {
    pub fn new(ca_pem: Option<&[u8]>) -> Result<Self, ProviderError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ssogate/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
                ProviderError::Config("CT_SSO_CA_FILE holds no usable certificate".into())
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| ProviderError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            jwks_fetches: metrics::Counter::noop(),
        })
    }

    /// Sends an openidconnect request, reading at most [`MAX_BODY`] of the answer.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| HttpError::Transport(e.to_string()))?;
        let mut builder = http::Response::builder().status(response.status());
        if let Some(headers) = builder.headers_mut() {
            headers.extend(
                response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        let body = read_limited(response).await?;
        builder
            .body(body)
            .map_err(|e| HttpError::Transport(e.to_string()))
    }

    /// GETs a JSON document; the status and at most [`MAX_BODY`] bytes.
    pub async fn get(&self, url: &str) -> Result<(http::StatusCode, Vec<u8>), HttpError> {
        self.get_dated(url)
            .await
            .map(|(status, _, body)| (status, body))
    }

    /// The same, with the time of the provider's `Date` header, if any.
    pub async fn get_dated(
        &self,
        url: &str,
    ) -> Result<(http::StatusCode, Option<std::time::SystemTime>, Vec<u8>), HttpError> {
        let response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| HttpError::Transport(e.to_string()))?;
        let status = response.status();
        let date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        Ok((status, date, read_limited(response).await?))
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError::Transport(e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What openidconnect calls for discovery, code exchange, refresh and userinfo.
impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
