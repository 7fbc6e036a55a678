//! WebSocket upgrades: recognising them, the cross-site check on `Origin`,
//! and splicing the two upgraded connections together.

use http::{HeaderMap, header};
use hyper::upgrade::OnUpgrade;
use metrics::Gauge;

use super::cutoff::Guard;
use super::relay::relay;
use super::stream::Switched;
use crate::respond::contains_ignore_case;
use crate::router::Held;
use crate::server::{self, SwitchedClient};

/// An HTTP/1.1 WebSocket handshake: `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| contains_ignore_case(v.as_bytes(), b"websocket"));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| contains_ignore_case(v.as_bytes(), b"upgrade"));
    upgrade && connection
}

/// Cross-site WebSocket hijacking guard: a browser always sends `Origin`;
/// it must be the gate's own or an allowed one. Clients that send none
/// (IDE plugins, CLIs) are judged by their credentials alone.
pub fn origin_allowed(headers: &HeaderMap, own: &str, extra: &[String]) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(v), None) => v
            .to_str()
            .map(|o| o.eq_ignore_ascii_case(own) || extra.iter().any(|e| o.eq_ignore_ascii_case(e)))
            .unwrap_or(false),
        (Some(_), Some(_)) => false,
    }
}

/// Relays bytes both ways once both sides have switched protocols
/// ([`relay`]). With a guard (the session's lease), the connection ends
/// when it fires: the client gets a WebSocket close frame with code 1008
/// (policy violation) at the next frame boundary, and the upstream side is
/// dropped. `open` counts the WebSocket while it lives; `held` keeps its
/// client connection counted.
pub fn splice(
    client: OnUpgrade,
    upstream: Switched,
    guard: Option<Guard>,
    open: Gauge,
    held: Held,
) {
    tokio::spawn(async move {
        let _held = held;
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        open.increment(1.0);
        let _open = OpenGuard(open);
        match server::take_back(client) {
            SwitchedClient::Plain(client) => relay(client, upstream, guard).await,
            SwitchedClient::Tls(client) => relay(client, upstream, guard).await,
            SwitchedClient::Hyper(client) => relay(client, upstream, guard).await,
        }
    });
}

/// Counts a WebSocket as open for as long as it lives, however it ends.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn origin_rules() {
        let own = "https://gate.example";
        let extra = vec!["https://ide.example".to_string()];
        let mut h = HeaderMap::new();
        assert!(
            origin_allowed(&h, own, &extra),
            "no Origin: judged by credentials"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gate.example"),
        );
        assert!(origin_allowed(&h, own, &extra));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://ide.example"),
        );
        assert!(origin_allowed(&h, own, &extra));
        for bad in [
            "https://evil.example",
            "null",
            "https://gate.example.evil.example",
            "http://gate.example",
        ] {
            h.insert(header::ORIGIN, HeaderValue::from_str(bad).unwrap());
            assert!(!origin_allowed(&h, own, &extra), "{bad}");
        }
    }

    #[test]
    fn websocket_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(!is_websocket(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_websocket(&h));
    }
}
