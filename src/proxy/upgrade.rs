//! WebSocket upgrades: recognising them, the cross-site check on `Origin`,
//! and splicing the two upgraded connections together.

use http::{HeaderMap, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::respond::contains_ignore_case;

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

/// Copies bytes both ways once both sides have switched protocols.
pub fn splice(client: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "websocket connection ended");
        }
    });
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
