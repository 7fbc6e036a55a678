//! The `ssogate` binary itself, as an operator runs it: a child process with
//! a clean environment in an empty working directory (no stray `.env`).
//! Also home of the helpers the configuration cases use to run it.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::support::certs::TestPki;
use crate::support::gate::api_client;
use crate::support::upstream::Upstream;

/// How long a run that should end at once may take before the test fails.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// A `ssogate` command with exactly `vars` (plus `PATH`), run in `dir`.
pub fn ssogate(dir: &Path, vars: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssogate"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // A panic would print its backtrace: easy to spot in the output.
        .env("RUST_BACKTRACE", "1")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// Both streams, for searching.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics when the output looks like a crash.
    pub fn assert_no_crash(&self) {
        let out = self.output();
        for sign in ["panicked", "backtrace", "RUST_BACKTRACE", "thread 'main'"] {
            assert!(
                !out.to_ascii_lowercase()
                    .contains(&sign.to_ascii_lowercase()),
                "the output shows a crash ({sign}):\n{out}"
            );
        }
    }

    /// Panics when any of `secrets` appears in the output.
    pub fn assert_hides(&self, secrets: &[&str]) {
        let out = self.output();
        for s in secrets {
            assert!(
                !out.contains(s),
                "the output shows the secret {s:?}:\n{out}"
            );
        }
    }
}

/// Runs `ssogate` with `vars` to its end (at most [`EXIT_TIMEOUT`]).
pub async fn run(dir: &Path, vars: &[(String, String)], args: &[&str]) -> Run {
    let out = tokio::time::timeout(EXIT_TIMEOUT, ssogate(dir, vars, args).output())
        .await
        .unwrap_or_else(|_| {
            panic!("ssogate {args:?} did not exit within {EXIT_TIMEOUT:?} (vars: {vars:?})")
        })
        .expect("run the ssogate binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `(name, value)` pairs from string slices.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A `ssogate` process serving in the background; killed when dropped.
pub struct Served {
    pub child: Child,
    pub port: u16,
    /// `http(s)://localhost:PORT`
    pub url: String,
    output: Arc<Mutex<Vec<String>>>,
}

/// Copies the lines of a child's pipe into `into` (and the test's output).
fn collect<R>(pipe: R, port: u16, into: Arc<Mutex<Vec<String>>>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            eprintln!("[ssogate:{port}] {line}");
            into.lock().unwrap().push(line);
        }
    });
}

impl Served {
    /// Starts `ssogate` listening on a free loopback port (`CT_LISTEN_ADDR`
    /// and `CT_SERVER_URL` are set here) and waits until `/sso/healthz`
    /// answers 200 through `client`.
    pub async fn start(
        dir: &Path,
        env: Vec<(String, String)>,
        tls: bool,
        client: &reqwest::Client,
    ) -> Served {
        Self::start_on(free_port(), dir, env, tls, client).await
    }

    /// The same on a port the caller chose (to register its URL at a provider first).
    pub async fn start_on(
        port: u16,
        dir: &Path,
        mut env: Vec<(String, String)>,
        tls: bool,
        client: &reqwest::Client,
    ) -> Served {
        let url = format!("{}://localhost:{port}", if tls { "https" } else { "http" });
        env.retain(|(k, _)| k != "CT_LISTEN_ADDR" && k != "CT_SERVER_URL");
        env.push(("CT_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("CT_SERVER_URL".into(), url.clone()));
        let mut child = ssogate(dir, &env, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the ssogate binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        collect(stdout, port, Arc::clone(&output));
        collect(stderr, port, Arc::clone(&output));
        let served = Served {
            child,
            port,
            url,
            output,
        };
        let health = served.url("/sso/healthz");
        crate::assert_eventually!(
            client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200),
            Duration::from_secs(20),
            "the ssogate binary never answered {health}; output:\n{}",
            served.output()
        );
        served
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// What the process wrote (stdout and stderr: logs) so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the ssogate process is running")
    }

    /// Sends `signal` (e.g. `TERM`) with `kill(1)`.
    pub async fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }
}

/// Variables of a gate that forwards everything unauthenticated to `upstream`.
fn unauthenticated(upstream: &str) -> Vec<(String, String)> {
    vars(&[
        ("CT_UPSTREAM_URL", upstream),
        ("CT_ALLOW_UNAUTHENTICATED", "true"),
        ("CT_COOKIE_SECRET", crate::support::gate::COOKIE_SECRET),
    ])
}

async fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_response_finish_refuses_new_connections_and_exits_0() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = unauthenticated(&upstream.url);
    env.push(("CT_SHUTDOWN_GRACE".into(), "10s".into()));
    env.push(("CT_WORKER_THREADS".into(), "2".into()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut gate = Served::start(dir.path(), env, false, &client).await;

    let mut slow = client
        .get(gate.url("/slow?chunks=4&interval_ms=500"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let mut body = String::from_utf8(slow.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert_eq!(body, "chunk 0\n", "the first chunk comes at once");
    assert_eq!(upstream.open_streams(), 1, "the response is in flight");

    let signalled = Instant::now();
    gate.signal("TERM").await;
    crate::assert_eventually!(
        refused(gate.port).await,
        Duration::from_secs(5),
        "the gate still accepts connections after SIGTERM"
    );
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "the gate exited while a response was still in flight"
    );

    while let Some(chunk) = slow.chunk().await.expect("the in-flight body is not cut") {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");

    let status = tokio::time::timeout(Duration::from_secs(10), gate.child.wait())
        .await
        .expect("the gate did not exit within CT_SHUTDOWN_GRACE")
        .unwrap();
    assert_eq!(status.code(), Some(0), "output:\n{}", gate.output());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        signalled.elapsed()
    );
    // (Refusal is checked above, during the grace period; once the process
    // has exited, another test's listener may already hold the port.)
    // Each serving thread's last line, written as it ends, is in the log:
    // the lines a thread gathers are not lost at exit.
    crate::assert_eventually!(
        gate.output().matches("all connections closed").count() == 2,
        Duration::from_secs(5),
        "a serving thread's last log line is missing:\n{}",
        gate.output()
    );
    let request_line = gate
        .output()
        .lines()
        .any(|l| l.contains("/slow") && l.contains("status=200"));
    assert!(request_line, "no request line:\n{}", gate.output());
}

/// One keep-alive request on a fresh connection: the connection, if the
/// gate answered it (200) within 5 s.
async fn served_connection(port: u16) -> Option<TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET /sso/healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf[..n].starts_with(b"HTTP/1.1 200").then_some(s)
}

/// A burst of connections, as from a client opening its pool: whichever
/// thread accepts them, the ones handed on to less loaded threads are
/// served there, each keeps being served on its own thread (a second
/// request on every one), and nothing is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_served_throughout_whichever_thread_takes_each() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = unauthenticated(&upstream.url);
    env.push(("CT_WORKER_THREADS".into(), "3".into()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let gate = Served::start(dir.path(), env, false, &client).await;
    let port = gate.port;
    let burst = (0..30).map(|_| tokio::spawn(served_connection(port)));
    let mut held = Vec::new();
    for (i, conn) in burst.enumerate() {
        let conn = conn.await.unwrap();
        held.push(
            conn.unwrap_or_else(|| panic!("connection {i} was not served:\n{}", gate.output())),
        );
    }
    for (i, s) in held.iter_mut().enumerate() {
        let req = format!("GET /app/again HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: no second answer"))
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "connection {i}: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    assert_eq!(
        upstream.requests().len(),
        30,
        "every second request reached the upstream once"
    );
}

/// With several serving threads (one runtime each, accepting from one
/// socket), requests are served, `CT_MAX_CONNECTIONS` bounds them all
/// together, and SIGTERM stops every thread with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_share_one_connection_limit_and_all_stop_at_sigterm() {
    const LIMIT: usize = 4;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = unauthenticated(&upstream.url);
    for (k, v) in [
        ("CT_WORKER_THREADS", "3"),
        ("CT_MAX_CONNECTIONS", "4"),
        ("CT_HEADER_READ_TIMEOUT", "60s"),
        ("CT_SHUTDOWN_GRACE", "10s"),
    ] {
        env.push((k.into(), v.into()));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut gate = Served::start(dir.path(), env, false, &client).await;
    // The readiness client's connection may still be closing: retry a little.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while held.len() < LIMIT && Instant::now() < deadline {
        match served_connection(gate.port).await {
            Some(s) => held.push(s),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(held.len(), LIMIT, "output:\n{}", gate.output());
    for attempt in 0..3 {
        assert!(
            served_connection(gate.port).await.is_none(),
            "attempt {attempt}: a connection over the limit of {LIMIT} was served \
             (each thread kept a limit of its own?)"
        );
    }
    drop(held.pop());
    crate::assert_eventually!(
        served_connection(gate.port).await.is_some(),
        Duration::from_secs(5),
        "a freed slot is not reused"
    );

    gate.signal("TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(10), gate.child.wait())
        .await
        .expect("the gate did not exit within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "output:\n{}", gate.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_gate_exits_0_at_once() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = unauthenticated(&upstream.url);
    env.push(("CT_SHUTDOWN_GRACE".into(), "30s".into()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut gate = Served::start(dir.path(), env, false, &client).await;
    // A kept-alive idle connection must not hold the shutdown for the grace period.
    let seen = client.get(gate.url("/idle")).send().await.unwrap();
    assert_eq!(seen.status(), 200);

    let signalled = Instant::now();
    gate.signal("TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(10), gate.child.wait())
        .await
        .expect("an idle gate did not exit within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "output:\n{}", gate.output());
    assert!(signalled.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_stops_the_gate_with_exit_0() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut gate = Served::start(dir.path(), unauthenticated(&upstream.url), false, &client).await;
    gate.signal("INT").await;
    let status = tokio::time::timeout(Duration::from_secs(10), gate.child.wait())
        .await
        .expect("the gate did not exit after SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(0), "output:\n{}", gate.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_with_http2_and_http1_by_alpn() {
    let pki = TestPki::new();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = unauthenticated(&upstream.url);
    env.push((
        "CT_TLS_CERT_FILE".into(),
        pki.cert_file.display().to_string(),
    ));
    env.push(("CT_TLS_KEY_FILE".into(), pki.key_file.display().to_string()));
    let client = api_client(&pki);
    let gate = Served::start(dir.path(), env, true, &client).await;
    assert!(gate.url.starts_with("https://"));

    let health = client.get(gate.url("/sso/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), reqwest::Version::HTTP_2);

    let forwarded = client.get(gate.url("/over/h2")).send().await.unwrap();
    assert_eq!(forwarded.status(), 200);
    assert_eq!(forwarded.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        upstream.last_request().unwrap().path_and_query,
        "/over/h2",
        "the request was forwarded"
    );

    let http1 = reqwest::Client::builder()
        .add_root_certificate(pki.reqwest_certificate())
        .http1_only()
        .build()
        .unwrap();
    let resp = http1.get(gate.url("/sso/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    // Plain http on the TLS port is not served.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let refused = plain
        .get(format!("http://127.0.0.1:{}/sso/healthz", gate.port))
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() != 200),
        "plain http answered on the TLS port: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_argument_prints_usage_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &[], &["serve-please"]).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("usage: ssogate"), "{r:?}");
    r.assert_no_crash();
}

/// The resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A 1 GiB upload passes the real binary to the upstream in constant
/// memory: the gate's resident memory is sampled throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_upload_passes_through_in_constant_memory() {
    const BLOCK: usize = 1 << 20;
    const BLOCKS: usize = 1024;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let gate = Served::start(dir.path(), unauthenticated(&upstream.url), false, &client).await;
    let pid = gate.pid();
    let start = rss_kib(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(start));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let block = bytes::Bytes::from(vec![0x5au8; BLOCK]);
    let body = futures_util::stream::iter(
        (0..BLOCKS).map(move |_| Ok::<_, std::io::Error>(block.clone())),
    );
    let resp = client
        .post(gate.url("/upload"))
        .header("accept", "application/json")
        .timeout(Duration::from_secs(300))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    assert_eq!(resp.status(), 200);
    let got: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(got["bytes"], (BLOCK * BLOCKS) as u64, "{got}");
    let grew = peak
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(start);
    eprintln!("gate RSS: {start} KiB at start, grew by at most {grew} KiB during a 1 GiB upload");
    assert!(
        grew < 48 * 1024,
        "the gate's memory grew by {grew} KiB during a 1 GiB upload (start {start} KiB)"
    );
}
