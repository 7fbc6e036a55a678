//! WebSocket helper for `benches/load/websockets.sh`.
//!
//! ```text
//! wstool echo ADDR                                  echo upstream; prints "ready ADDR", runs until killed
//! wstool load URL CONNS SECS SIZE [-H 'K: V']...    closed-loop echo load: each connection sends one
//!                                                   binary message of SIZE bytes and waits for it back;
//!                                                   prints one JSON line
//! wstool idle URL CONNS SOURCES HOLD [-H 'K: V']... opens CONNS connections (source addresses from the
//!                                                   comma-separated SOURCES, round robin), proves each
//!                                                   with one echo, then holds them idle for HOLD seconds,
//!                                                   printing a JSON status line every second
//! ```
//!
//! `WSTOOL_THREADS` sets the runtime's worker threads (default 2).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = std::env::var("WSTOOL_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wstool: runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(args));
    std::process::exit(code);
}

fn usage() -> i32 {
    eprintln!("usage: wstool echo ADDR | load URL CONNS SECS SIZE [-H 'K: V']... | idle URL CONNS SOURCES HOLD [-H 'K: V']...");
    2
}

/// Positional arguments and `-H 'Name: value'` pairs.
fn split_args(args: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut pos = Vec::new();
    let mut headers = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-H" {
            if let Some(h) = it.next() {
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
        } else {
            pos.push(a.clone());
        }
    }
    (pos, headers)
}

async fn run(args: Vec<String>) -> i32 {
    let (pos, headers) = split_args(&args);
    match pos.first().map(String::as_str) {
        Some("echo") if pos.len() == 2 => echo(&pos[1]).await,
        Some("load") if pos.len() == 5 => {
            let (Ok(conns), Ok(secs), Ok(size)) = (
                pos[2].parse::<usize>(),
                pos[3].parse::<f64>(),
                pos[4].parse::<usize>(),
            ) else {
                return usage();
            };
            load(&pos[1], conns, secs, size, &headers).await
        }
        Some("idle") if pos.len() == 5 => {
            let (Ok(conns), Ok(hold)) = (pos[2].parse::<usize>(), pos[4].parse::<u64>()) else {
                return usage();
            };
            let sources: Result<Vec<IpAddr>, _> = pos[3].split(',').map(str::parse).collect();
            let Ok(sources) = sources else {
                return usage();
            };
            idle(&pos[1], conns, sources, hold, &headers).await
        }
        _ => usage(),
    }
}

async fn echo(addr: &str) -> i32 {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wstool echo: bind {addr}: {e}");
            return 1;
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("ready {a}"),
        Err(_) => println!("ready {addr}"),
    }
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning.
                eprintln!("wstool echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if !is_upgrade(&stream).await {
                // A plain request (the sign-in lands here): a tiny page, then close.
                let mut stream = stream;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                    .await;
                let _ = stream.shutdown().await;
                return;
            }
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
    }
}

/// Peeks at the request head: is it a WebSocket upgrade?
async fn is_upgrade(stream: &TcpStream) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..200 {
        let Ok(n) = stream.peek(&mut buf).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let head = &buf[..n];
        if head.windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            let lower = head.to_ascii_lowercase();
            return lower.windows(18).any(|w| w == b"upgrade: websocket");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

async fn connect(
    url: &str,
    headers: &[(String, String)],
    source: Option<IpAddr>,
) -> Result<Ws, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad URL: {e}"))?;
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
        req.headers_mut().insert(name, value);
    }
    let host = req.uri().host().unwrap_or("127.0.0.1").to_owned();
    let port = req.uri().port_u16().unwrap_or(80);
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("host must be an IP address: {host}"))?;
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream = sock
        .connect(SocketAddr::new(ip, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(format!("handshake refused: HTTP {}", resp.status())),
        Err(e) => Err(format!("handshake: {e}")),
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn load(
    url: &str,
    conns: usize,
    secs: f64,
    size: usize,
    headers: &[(String, String)],
) -> i32 {
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        match connect(url, headers, None).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                println!("{{\"error\":{:?}}}", e);
                return 1;
            }
        }
    }
    let payload = Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(conns);
    for mut ws in sockets {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    errors += 1;
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if b.len() == payload.len() => {
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (lat, errors)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0u64;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        } else {
            errors += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let n = all.len();
    println!(
        "{{\"messages\":{n},\"secs\":{elapsed:.3},\"msgs_per_s\":{:.1},\"mbytes_per_s\":{:.2},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
        n as f64 / elapsed,
        (n * size * 2) as f64 / elapsed / 1e6,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    );
    i32::from(errors > 0)
}

async fn idle(
    url: &str,
    conns: usize,
    sources: Vec<IpAddr>,
    hold: u64,
    headers: &[(String, String)],
) -> i32 {
    let sem = Arc::new(Semaphore::new(256));
    let (stop_tx, stop_rx) = watch::channel(false);
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let headers: Arc<Vec<(String, String)>> = Arc::new(headers.to_vec());
    let url: Arc<str> = Arc::from(url);
    let start = Instant::now();
    for i in 0..conns {
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            break;
        };
        let src = sources.get(i % sources.len().max(1)).copied();
        let (opened, failed, dropped, first_error) = (
            Arc::clone(&opened),
            Arc::clone(&failed),
            Arc::clone(&dropped),
            Arc::clone(&first_error),
        );
        let (headers, url) = (Arc::clone(&headers), Arc::clone(&url));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let proved = match connect(&url, &headers, src).await {
                Ok(mut ws) => match ws.send(Message::text("hello")).await {
                    Ok(()) => match ws.next().await {
                        Some(Ok(Message::Text(_))) => Ok(ws),
                        other => Err(format!("no echo: {other:?}")),
                    },
                    Err(e) => Err(format!("send: {e}")),
                },
                Err(e) => Err(e),
            };
            drop(permit);
            match proved {
                Ok(mut ws) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = ws.next() => { dropped.fetch_add(1, Ordering::Relaxed); }
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let mut f = first_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if f.is_none() {
                        *f = Some(e);
                    }
                }
            }
        });
    }
    let open_deadline = start + Duration::from_secs(180);
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < conns
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_secs = start.elapsed().as_secs_f64();
    let held_from = Instant::now();
    loop {
        let err = first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        println!(
            "{{\"phase\":\"held\",\"open\":{},\"errors\":{},\"dropped\":{},\"open_secs\":{open_secs:.2},\"first_error\":{err:?}}}",
            opened.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            dropped.load(Ordering::Relaxed),
        );
        if held_from.elapsed() >= Duration::from_secs(hold) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = stop_tx.send(true);
    0
}
