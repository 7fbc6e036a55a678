//! Wiring: configuration in, a bound listener and a running gate out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::live::Live;
use crate::provider::{ProviderError, Registry};
use crate::proxy::{Proxy, ProxyError};
use crate::router::State;
use crate::server::{self, tls};
use crate::session::refresh::SingleFlight;
use crate::session::{CookieNames, CookieStore, LoginStates, SealError, Sealer};
use crate::telemetry::exporter;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("CT_LISTEN_ADDR: cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("CT_METRICS_ADDR: cannot listen on {0}: {1}")]
    BindMetrics(SocketAddr, std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("CT_SSO_AUTHORIZATION_ENDPT: {0}")]
    Provider(#[from] ProviderError),
    #[error("CT_UPSTREAM_URL: {0}")]
    Proxy(#[from] ProxyError),
    #[error("CT_COOKIE_SECRET: {0}")]
    Seal(#[from] SealError),
}

/// Installs the process-wide crypto providers (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// A gate ready to serve.
pub struct App {
    listener: TcpListener,
    tls: Option<tls::Tls>,
    tls_reload_interval: Duration,
    /// Bound from `CT_METRICS_ADDR`, or given by a test.
    metrics_listener: Option<TcpListener>,
    state: Arc<State>,
}

impl App {
    /// Binds `CT_LISTEN_ADDR` and builds the gate.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| AppError::Bind(config.listen_addr, e))?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| AppError::BindMetrics(addr, e))?,
            ),
            None => None,
        };
        Ok(Self::with_listener(config, listener)?.with_metrics_listener(metrics))
    }

    /// Serves Prometheus metrics on `listener` (tests bind port 0).
    #[must_use]
    pub fn with_metrics_listener(mut self, listener: Option<TcpListener>) -> Self {
        self.metrics_listener = listener;
        self
    }

    /// Where metrics are served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Builds the gate on a listener the caller bound (tests use port 0).
    /// Starts loading the providers in the background; call inside a runtime.
    pub fn with_listener(config: Config, listener: TcpListener) -> Result<Self, AppError> {
        install_crypto();
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
        let sealer = Arc::new(Sealer::new(&config.cookie_keys.keys)?);
        let names = CookieNames::new(config.is_https());
        let callback = config.callback_url();
        let metrics = Arc::new(Metrics::new());
        let options = config
            .login_options
            .iter()
            .map(|o| o.build(&callback, &metrics))
            .collect::<Result<Vec<_>, _>>()?;
        let proxy = Proxy::new(
            &config.upstream_url,
            &config.server_url,
            config.upstream_ca_pem.as_deref(),
            config.upstream_http2,
            crate::proxy::ClientPolicy {
                body_idle_timeout: config.limits.body_idle_timeout,
                trusted_proxies: config.trusted_proxies.clone(),
                websockets_open: metrics.websockets_open.clone(),
                upstream_opened: metrics.upstream_opened.clone(),
            },
        )?;
        let state = State {
            registry: Registry::new(options),
            store: Arc::new(
                CookieStore::new(sealer.clone(), names.clone())
                    .with_max_revocations(config.limits.max_revocations),
            ),
            login_states: LoginStates::new(sealer, names)
                .with_max_per_browser(config.limits.max_login_states),
            proxy,
            origin: config.origin(),
            policy: config.session.into(),
            grace: config.session.refresh_grace.as_secs(),
            refreshes: SingleFlight::new(config.limits.max_refreshes),
            live: Arc::new(Live::default()),
            metrics,
            config,
        };
        Ok(Self {
            listener,
            tls,
            tls_reload_interval: tls::RELOAD_INTERVAL,
            metrics_listener: None,
            state: Arc::new(state),
        })
    }

    /// How often the TLS certificate and key files are checked for a change
    /// (default 10 s; zero: never).
    #[must_use]
    pub fn with_tls_reload_interval(mut self, interval: Duration) -> Self {
        self.tls_reload_interval = interval;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for
    /// at most `CT_SHUTDOWN_GRACE`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let settings = server::Settings {
            threads: self
                .state
                .config
                .limits
                .worker_threads
                .unwrap_or_else(server::usable_cpus),
            header_read_timeout: self.state.config.header_read_timeout,
            shutdown_grace: self.state.config.shutdown_grace,
            max_header_bytes: self.state.config.limits.max_header_bytes,
            max_connections: self.state.config.limits.max_connections,
        };
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, tls = self.tls.is_some(), upstream = %self.state.config.upstream_url, upstream_http2 = self.state.config.upstream_http2, "ssogate serving");
        }
        let _reloading = self.tls.as_ref().map(|t| t.watch(self.tls_reload_interval));
        let metrics = self.state.metrics.clone();
        let _upkeep = Abort(tokio::spawn(exporter::upkeep(metrics.clone())));
        let _metrics = self.metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at /metrics");
            }
            Abort(tokio::spawn(exporter::serve(listener, metrics)))
        });
        let tls = self.tls.as_ref().map(tls::Tls::acceptor);
        server::serve(self.listener, tls, self.state, settings, shutdown).await;
    }
}

/// Ends a background task when the gate stops.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}
