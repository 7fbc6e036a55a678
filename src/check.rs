//! `ssogate check-config`: validate the configuration, reach the provider
//! and report what it says (the preflight of [`provider::oidc::doctor`]),
//! one finding per line with its fix; non-zero exit on any error.

use crate::config::Config;
use crate::provider;
use crate::provider::oidc::doctor::Level;

/// One line per finding (`ok:`, `warning:`, `error:` …); `Err` with the
/// errors when the gate could not work as configured.
pub async fn check(config: &Config) -> Result<Vec<String>, Vec<String>> {
    crate::app::install_crypto();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    ok.push(format!(
        "ok: configuration is valid; the gate serves {} and forwards to {}{}",
        config.origin(),
        config.upstream_url,
        if config.upstream_http2 {
            " over HTTP/2 (WebSockets over HTTP/1.1)"
        } else {
            ""
        }
    ));
    for w in &config.warnings {
        ok.push(format!("warning: {w}"));
    }
    // What serving would refuse (e.g. a certificate and key that are not a pair).
    if let Some(files) = &config.tls {
        match crate::server::tls::acceptor(files) {
            Ok(_) => ok.push(format!(
                "ok: serves HTTPS with {} (HTTP/2 and HTTP/1.1)",
                files.cert_file.display()
            )),
            Err(e) => bad.push(e.to_string()),
        }
    }
    for option in &config.login_options {
        match option {
            provider::Config::Oidc(settings) => {
                match provider::oidc::check(settings, &config.callback_url()).await {
                    Ok(findings) => {
                        for f in findings {
                            match f.level {
                                Level::Error => bad.push(f.to_string()),
                                Level::Ok | Level::Warning => ok.push(f.to_string()),
                            }
                        }
                    }
                    Err(e) => bad.push(format!("CT_SSO_AUTHORIZATION_ENDPT: {e}")),
                }
            }
        }
    }
    if !config.login_options.is_empty() {
        ok.push(format!(
            "ok: register this login redirect URI at the provider: {}",
            config.callback_url()
        ));
        ok.push(format!(
            "ok: register this logout redirect URI at the provider: {}",
            config.logout_url()
        ));
        ok.push(format!(
            "ok: register this back-channel logout URI, if the provider offers it: {}/sso/backchannel-logout",
            config.origin()
        ));
    }
    if bad.is_empty() { Ok(ok) } else { Err(bad) }
}
