//! WebSocket upgrades: recognising them, the cross-site check on `Origin`,
//! and splicing the two upgraded connections together.

use http::{HeaderMap, header};
use hyper::upgrade::OnUpgrade;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;

use metrics::Gauge;

use super::cutoff::Guard;
use super::lazy_buf::{LazyReader, LazyWriter};
use super::stream::Switched;

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

/// Copies bytes both ways once both sides have switched protocols. With a
/// guard (the session's lease), the connection ends when it fires: the
/// client gets a WebSocket close frame with code 1008 (policy violation) at
/// the next frame boundary, and the upstream side is dropped.
pub fn splice(client: OnUpgrade, upstream: Switched, guard: Option<Guard>, open: Gauge) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        open.increment(1.0);
        let _open = OpenGuard(open);
        let client = TokioIo::new(client);
        match guard {
            None => {
                let (client_rx, mut client_tx) = tokio::io::split(client);
                let (upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
                tokio::join!(
                    pump(client_rx, &mut upstream_tx),
                    pump(upstream_rx, &mut client_tx)
                );
            }
            Some(guard) => relay_until(client, upstream, guard).await,
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

/// After the guard fires, how long a frame in progress may take to finish
/// before both sides are simply dropped.
const HARD_STOP: Duration = Duration::from_secs(3);
/// Close frame, server to client (unmasked): code 1008, reason "session ended".
const CLOSE_1008: [u8; 17] = *b"\x88\x0f\x03\xf0session ended";

async fn relay_until<C, U>(client: C, upstream: U, guard: Guard)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut client_rx, client_tx) = tokio::io::split(client);
    let (upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    let watch_guard = async move {
        guard.await;
        let _ = stop_tx.send(true);
        std::future::pending::<()>().await;
    };
    let up = pump(&mut client_rx, &mut upstream_tx);
    let down = relay_frames(
        LazyReader::new(upstream_rx),
        LazyWriter::new(client_tx),
        stop_rx.clone(),
    );
    let mut hard_rx = stop_rx;
    let hard = async move {
        stopped(&mut hard_rx).await;
        tokio::time::sleep(HARD_STOP).await;
    };
    tokio::select! {
        () = watch_guard => {}
        () = up => {}
        () = down => {}
        () = hard => tracing::debug!("websocket frame did not finish after its session ended; dropped"),
    }
}

/// Resolves once `stop` is true (the borrow it holds is gone by then).
/// Copies `from` to `to` until either ends, then shuts `to` down; buffers
/// only while bytes flow.
async fn pump<R, W>(from: R, to: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_buf(&mut LazyReader::new(from), to).await {
        tracing::debug!(error = %e, "websocket connection ended");
    }
    let _ = to.shutdown().await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Forwards upstream frames to the client one by one, so that a close frame
/// can be put in between two of them once `stop` turns true.
async fn relay_frames<R, W>(mut from: R, mut to: W, mut stop: watch::Receiver<bool>)
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut first = [0u8; 1];
        tokio::select! {
            biased;
            () = stopped(&mut stop) => {
                let _ = to.write_all(&CLOSE_1008).await;
                let _ = to.flush().await;
                let _ = to.shutdown().await;
                tracing::info!("websocket closed: its session ended");
                return;
            }
            read = from.read_exact(&mut first) => if read.is_err() {
                let _ = to.flush().await;
                return;
            },
        }
        if relay_one_frame(first[0], &mut from, &mut to).await.is_err() {
            return;
        }
    }
}

/// Copies the rest of one frame whose first byte was already read.
async fn relay_one_frame<R, W>(first: u8, from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut second = [0u8; 1];
    from.read_exact(&mut second).await?;
    let extended = match second[0] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second[0] & 0x80 != 0 { 4 } else { 0 };
    let mut rest = [0u8; 12];
    from.read_exact(&mut rest[..extended + mask]).await?;
    let payload = match extended {
        2 => u64::from(u16::from_be_bytes([rest[0], rest[1]])),
        8 => u64::from_be_bytes([
            rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6], rest[7],
        ]),
        _ => u64::from(second[0] & 0x7f),
    };
    to.write_all(&[first, second[0]]).await?;
    to.write_all(&rest[..extended + mask]).await?;
    let copied = tokio::io::copy_buf(&mut from.take(payload), to).await?;
    to.flush().await?;
    if copied == payload {
        Ok(())
    } else {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use tokio::io::duplex;

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

    #[tokio::test]
    async fn frames_pass_whole_and_a_close_1008_follows_the_stop() {
        // Two upstream frames: a short text "hi" and a 300-byte binary one (16-bit length).
        let mut upstream_bytes = vec![0x81, 0x02, b'h', b'i', 0x82, 126, 0x01, 0x2c];
        upstream_bytes.extend(std::iter::repeat_n(7u8, 300));
        let (mut upstream_w, upstream_r) = duplex(4096);
        let (client_w, mut client_r) = duplex(4096);
        let (stop_tx, stop_rx) = watch::channel(false);
        let relay = tokio::spawn(relay_frames(
            LazyReader::new(upstream_r),
            LazyWriter::new(client_w),
            stop_rx,
        ));
        upstream_w.write_all(&upstream_bytes).await.unwrap();
        let mut got = vec![0u8; upstream_bytes.len()];
        client_r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, upstream_bytes, "frames are relayed unchanged");
        stop_tx.send(true).unwrap();
        let mut close = Vec::new();
        client_r.read_to_end(&mut close).await.unwrap();
        assert_eq!(close, CLOSE_1008);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1008);
        assert_eq!(usize::from(close[1]), close.len() - 2);
        relay.await.unwrap();
    }
}
