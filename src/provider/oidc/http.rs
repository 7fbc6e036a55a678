//! The HTTP client the gate uses to talk to a provider: no redirects (SSRF),
//! bounded time, the extra CA bundle of `CT_SSO_CA_FILE`.

use std::time::Duration;

use super::super::ProviderError;

pub const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, ProviderError> {
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
    builder
        .build()
        .map_err(|e| ProviderError::Config(format!("HTTP client: {e}")))
}
