//! A gate (https) in front of a recording upstream, signing in at the
//! configurable fake provider: the rig of the provider-quirk and
//! relying-party cases.

use std::time::Duration;

use super::browser::Browser;
use super::certs::TestPki;
use super::fake_idp::{FakeIdp, FakeOptions, Preset};
use super::gate::{Gate, api_client, base_vars, init_logs, reserve};
use super::upstream::Upstream;

pub struct Rig {
    pub pki: TestPki,
    pub upstream: Upstream,
    pub idp: FakeIdp,
    pub gate: Gate,
}

impl Rig {
    /// A gate for `preset` with `vars` added to the base configuration.
    pub async fn start(preset: Preset, vars: &[(&str, &str)]) -> Rig {
        Self::start_with(preset, vars, |_| {}, false).await
    }

    /// `shape` edits the provider's options before it starts; `refresh`
    /// sets `CT_SSO_TOKEN_ENDPT` to its token endpoint. Returns once the
    /// gate is ready (discovery and keys loaded).
    pub async fn start_with(
        preset: Preset,
        vars: &[(&str, &str)],
        shape: impl FnOnce(&mut FakeOptions),
        refresh: bool,
    ) -> Rig {
        init_logs();
        let pki = TestPki::new();
        let upstream = Upstream::start().await;
        let (listener, url) = reserve(true).await;
        let mut opts = FakeOptions::preset(preset, &url);
        shape(&mut opts);
        let idp = FakeIdp::start(opts).await;
        let mut all = base_vars(&url, &upstream.url, &idp.authority, &pki, true);
        if refresh {
            all.push(("CT_SSO_TOKEN_ENDPT".into(), idp.token_endpoint()));
        }
        for (k, v) in vars {
            all.retain(|(name, _)| name != k);
            all.push(((*k).to_owned(), (*v).to_owned()));
        }
        let gate = Gate::start_on(listener, url, all).await.unwrap();
        let rig = Rig {
            pki,
            upstream,
            idp,
            gate,
        };
        rig.wait_ready().await;
        rig
    }

    pub async fn readyz(&self) -> u16 {
        api_client(&self.pki)
            .get(self.gate.url("/sso/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    pub async fn wait_ready(&self) {
        crate::assert_eventually!(
            self.readyz().await == 200,
            Duration::from_secs(20),
            "the gate never became ready with the fake provider at {}",
            self.idp.authority
        );
    }

    pub fn browser(&self) -> Browser {
        Browser::new(Some(&self.pki.ca_pem))
    }
}
