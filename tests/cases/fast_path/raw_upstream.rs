//! A raw HTTP/1.1 upstream answering canned bytes, for answers the
//! recording upstream (hyper) cannot give: ended by the close, HTTP/1.0,
//! hop-by-hop headers, trailers, none at all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The hop-by-hop headers of [`RawUpstream`]'s `/hop` answer.
pub(super) const UPSTREAM_HOPS: [&str; 5] = [
    "x-up",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "upgrade",
];

/// An HTTP/1.1 upstream that answers canned bytes by path:
/// - `/close-10`: an HTTP/1.0 answer without a length, ended by the close;
/// - `/close-11`: the same in HTTP/1.1 with `Connection: close`;
/// - `/hop`: hop-by-hop headers, `X-Request-Id: upstream-id`, 2 bytes `ok`;
/// - `/trailers`: a chunked body with a chunk extension and a trailer;
/// - `/stall`: no answer; the connection is held until the gate drops it;
/// - anything else: 200 with the path as its body (`Content-Length`).
///
/// It reads request heads only (the tests send no bodies to it).
pub(super) struct RawUpstream {
    pub(super) url: String,
    /// Every request head received, oldest first.
    heads: Arc<Mutex<Vec<String>>>,
    /// `/stall` requests whose connection the gate has closed.
    stalls_dropped: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub(super) async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stalls_dropped = Arc::new(Mutex::new(0));
        let (h, s) = (heads.clone(), stalls_dropped.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(Self::serve(tcp, h.clone(), s.clone()));
            }
        });
        RawUpstream {
            url,
            heads,
            stalls_dropped,
            task,
        }
    }

    async fn serve(
        mut tcp: TcpStream,
        heads: Arc<Mutex<Vec<String>>>,
        stalls_dropped: Arc<Mutex<usize>>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    break head;
                }
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            heads.lock().unwrap().push(head);
            let (answer, close): (Vec<u8>, bool) = match path.as_str() {
                "/close-10" => (
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited, HTTP/1.0"
                        .to_vec(),
                    true,
                ),
                "/close-11" => (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
                      close-delimited, HTTP/1.1"
                        .to_vec(),
                    true,
                ),
                "/hop" => (
                    b"HTTP/1.1 200 OK\r\nConnection: x-up\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\n\
                      Proxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
                      X-Request-Id: upstream-id\r\nX-Kept: yes\r\nContent-Type: text/plain\r\n\
                      Content-Length: 2\r\n\r\nok"
                        .to_vec(),
                    false,
                ),
                "/trailers" => (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
                      Trailer: X-T\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
                        .to_vec(),
                    false,
                ),
                "/refuse" => {
                    // Refuses an upload without reading its body, as servers
                    // do, then waits for the gate to let go of the connection
                    // (closing with the body unread would reset it).
                    let refusal = b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\n\
                      Content-Length: 7\r\nConnection: close\r\n\r\ntoo big";
                    if tcp.write_all(refusal).await.is_err() {
                        return;
                    }
                    while let Ok(n) = tcp.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                    return;
                }
                "/stall" => {
                    // Hold the connection until the gate lets go of it.
                    while let Ok(n) = tcp.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                    *stalls_dropped.lock().unwrap() += 1;
                    return;
                }
                other => (
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{other}",
                        other.len()
                    )
                    .into_bytes(),
                    false,
                ),
            };
            if close {
                // The body in two writes, then the end of the stream.
                let (first, rest) = answer.split_at(answer.len() - 5);
                if tcp.write_all(first).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tcp.write_all(rest).await;
                let _ = tcp.shutdown().await;
                return;
            }
            if tcp.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    pub(super) fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub(super) fn stalls_dropped(&self) -> usize {
        *self.stalls_dropped.lock().unwrap()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
