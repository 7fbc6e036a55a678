//! The upstream's routes: one request in, one recorded request and a response out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::{Body, Gauge, State, pattern_byte};

pub(super) async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
    stop: watch::Receiver<()>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/ws" || wants_websocket(req.headers()) {
        return Ok(websocket(req, st, stop));
    }
    if req.uri().path() == "/upload" {
        return Ok(upload(req, st).await);
    }
    let (parts, body) = req.into_parts();
    let body_len = drain(body).await;
    st.record(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        body_len,
    );
    let query = query_map(parts.uri.query());
    let path = parts.uri.path();
    if path == "/drop-once" && st.first_drop(query.get("key").map_or("", String::as_str)) {
        // Every connection ends now, this request's too: it gets no answer.
        st.kick.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        return Ok(json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "the connection outlived /drop-once"}),
        ));
    }
    let response = if path == "/slow" {
        let chunks = query_u64(&query, "chunks", 5);
        let interval = Duration::from_millis(query_u64(&query, "interval_ms", 100));
        slow(chunks, interval, st)
    } else if path == "/big" {
        big(query_u64(&query, "bytes", 1 << 20), st)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status(code)
    } else if path == "/big-head" {
        big_head(query_u64(&query, "bytes", 70 * 1024))
    } else {
        echo(&parts, body_len)
    };
    if parts.method == Method::HEAD && parts.version == Version::HTTP_2 {
        return Ok(without_body(response));
    }
    Ok(response)
}

/// The answer to a `HEAD` over HTTP/2: its head (with the `content-length`
/// a `GET` would have), no body. hyper's HTTP/1.1 server does this itself;
/// its HTTP/2 server sends the body, which no real server does.
fn without_body(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    Response::from_parts(parts, Empty::new().boxed_unsync())
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Answers the handshake and echoes on the upgraded connection.
fn websocket(
    req: Request<Incoming>,
    st: Arc<State>,
    mut stop: watch::Receiver<()>,
) -> Response<Body> {
    st.record(req.method(), req.uri(), req.version(), req.headers(), 0);
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (Some(key), true) = (key, wants_websocket(req.headers())) else {
        return json(
            StatusCode::UPGRADE_REQUIRED,
            &serde_json::json!({"error": "websocket upgrade required"}),
        );
    };
    let protocol = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let _open = Gauge::up(&st, |s| &s.open_websockets);
        tokio::select! {
            _ = echo_messages(ws) => {}
            _ = stop.changed() => {}
        }
    });
    let mut response = Response::new(Empty::new().boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(Ok(p)) = protocol.map(|p| HeaderValue::from_str(&p)) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
}

async fn echo_messages<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let sent = match msg {
            Message::Text(ref t) if t.as_str() == "__close__" => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "closed by upstream".into(),
                };
                ws.close(Some(frame)).await
            }
            Message::Text(_) | Message::Binary(_) => ws.send(msg).await,
            // Pings are answered and closes acknowledged by tungstenite itself.
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn upload(req: Request<Incoming>, st: Arc<State>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    bytes += data.len() as u64;
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    st.record(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        bytes,
    );
    if let Some(error) = failed {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"bytes": bytes, "error": error}),
        );
    }
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({"bytes": bytes, "sha256": sha256}),
    )
}

fn slow(chunks: u64, interval: Duration, st: Arc<State>) -> Response<Body> {
    let open = Gauge::up(&st, |s| &s.open_streams);
    let stream = futures_util::stream::unfold((0u64, open), move |(i, open)| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok::<_, Infallible>(frame), (i + 1, open)))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn big(len: u64, st: Arc<State>) -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    // 26 extra bytes so a chunk can start at any phase of the pattern.
    let template: Bytes = (0..(CHUNK + 26) as u64)
        .map(pattern_byte)
        .collect::<Vec<_>>()
        .into();
    let open = Gauge::up(&st, |s| &s.open_streams);
    let stream = futures_util::stream::unfold((0u64, open), move |(offset, open)| {
        let template = template.clone();
        async move {
            if offset >= len {
                return None;
            }
            let n = (len - offset).min(CHUNK as u64) as usize;
            let phase = (offset % 26) as usize;
            let frame = Frame::data(template.slice(phase..phase + n));
            Some((Ok::<_, Infallible>(frame), (offset + n as u64, open)))
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

fn status(code: &str) -> Response<Body> {
    match code
        .parse::<u16>()
        .ok()
        .filter(|c| *c >= 200)
        .map(StatusCode::from_u16)
    {
        Some(Ok(status)) => {
            if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                let mut response = Response::new(Empty::new().boxed_unsync());
                *response.status_mut() = status;
                response
            } else {
                json(status, &serde_json::json!({"status": status.as_u16()}))
            }
        }
        _ => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad status code"}),
        ),
    }
}

fn echo(parts: &http::request::Parts, body_len: u64) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let body = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body_len,
        "version": format!("{:?}", parts.version),
    });
    let mut response = json(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static("app=1"));
    response
}

/// 200 with `x-filler` headers of 4 KiB each, about `bytes` in all.
fn big_head(bytes: u64) -> Response<Body> {
    let mut response = json(StatusCode::OK, &serde_json::json!({"big_head": bytes}));
    let filler = HeaderValue::from_str(&"f".repeat(4096)).expect("filler header");
    for _ in 0..bytes.div_ceil(4096) {
        response.headers_mut().append("x-filler", filler.clone());
    }
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads a body to its end (or first error), returning the bytes read.
async fn drain(mut body: Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    n
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn query_u64(query: &HashMap<String, String>, name: &str, default: u64) -> u64 {
    query
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
