//! A real OpenID provider for the end-to-end tests: `tests/idp/server.mjs`
//! (npm `oidc-provider`, version pinned in `tests/idp/package-lock.json`)
//! run by `node` as a child process.
//!
//! Test users: `alice`/`alice-pass`, `bob`/`bob-pass` (sub, email,
//! email_verified, name, preferred_username) and `carol`/`carol-pass` (no
//! email claims). After the login form the provider shows a consent page
//! (one "Continue" button) unless [`IdpOptions::skip_consent`] is set;
//! [`super::browser::Browser`] handles both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How long one start may take to print its ready line (it takes about
/// 0.4 s here, a few seconds on a busy machine).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts tried before a silent provider fails the test.
const START_ATTEMPTS: usize = 3;
/// Lines of the provider's stderr kept for panic messages.
const STDERR_TAIL: usize = 60;

/// Settings of one provider; build with [`IdpOptions::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct IdpOptions {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Registered `backchannel_logout_uri`; logout tokens carry `sub` and `sid`.
    pub backchannel_logout_uri: Option<String>,
    /// Seconds.
    pub id_token_ttl: u64,
    /// Seconds.
    pub access_token_ttl: u64,
    /// Seconds.
    pub refresh_token_ttl: u64,
    /// Rotate refresh tokens on every refresh; a reused one is rejected
    /// (`invalid_grant`) and revokes the whole grant.
    pub rotate_refresh_tokens: bool,
    /// 0 = any free port. Pass a previous provider's port to restart it "in
    /// place" (new signing key, all sessions and tokens gone).
    pub port: u16,
    /// (certificate chain PEM file, key PEM file): serve https.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Loopback address to bind; the issuer uses it too. Default `127.0.0.1`.
    /// A different loopback address than the gate's (e.g. `127.0.0.2`) keeps
    /// the provider's cookies apart from the gate's in the browser's jar.
    pub host: String,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub auth_method: String,
    /// Require PKCE (S256) at the authorization endpoint. Default true.
    pub pkce_required: bool,
    /// No consent page: the requested scopes are granted right after login.
    pub skip_consent: bool,
    /// Extra PEM roots node trusts for its own outgoing calls (back-channel
    /// logout to an https gate); passed as `NODE_EXTRA_CA_CERTS`.
    pub extra_ca_pem: Option<String>,
    /// Any further environment for `server.mjs`.
    pub extra_env: Vec<(String, String)>,
}

impl IdpOptions {
    /// One confidential client whose redirect URI is
    /// `<gate>/sso/authorization-code/callback` and post-logout redirect URI
    /// `<gate>/sso/logout`; lifetimes 3600/3600/86400 s, no rotation.
    pub fn new(client_id: &str, client_secret: &str, gate_base_url: &str) -> IdpOptions {
        let gate = gate_base_url.trim_end_matches('/');
        IdpOptions {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: vec![format!("{gate}/sso/authorization-code/callback")],
            post_logout_redirect_uris: vec![format!("{gate}/sso/logout")],
            backchannel_logout_uri: None,
            id_token_ttl: 3600,
            access_token_ttl: 3600,
            refresh_token_ttl: 86400,
            rotate_refresh_tokens: false,
            port: 0,
            tls: None,
            host: "127.0.0.1".to_owned(),
            auth_method: "client_secret_basic".to_owned(),
            pkce_required: true,
            skip_consent: false,
            extra_ca_pem: None,
            extra_env: Vec::new(),
        }
    }

    /// The same with the gate's back-channel logout URI
    /// `<gate>/sso/backchannel-logout` registered.
    pub fn with_backchannel(mut self, gate_base_url: &str) -> IdpOptions {
        let gate = gate_base_url.trim_end_matches('/');
        self.backchannel_logout_uri = Some(format!("{gate}/sso/backchannel-logout"));
        self
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("IDP_PORT".to_owned(), self.port.to_string()),
            ("IDP_HOST".to_owned(), self.host.clone()),
            ("IDP_CLIENT_ID".to_owned(), self.client_id.clone()),
            ("IDP_CLIENT_SECRET".to_owned(), self.client_secret.clone()),
            ("IDP_REDIRECT_URIS".to_owned(), self.redirect_uris.join(",")),
            (
                "IDP_POST_LOGOUT_REDIRECT_URIS".to_owned(),
                self.post_logout_redirect_uris.join(","),
            ),
            ("IDP_AUTH_METHOD".to_owned(), self.auth_method.clone()),
            ("IDP_ID_TOKEN_TTL".to_owned(), self.id_token_ttl.to_string()),
            (
                "IDP_ACCESS_TOKEN_TTL".to_owned(),
                self.access_token_ttl.to_string(),
            ),
            (
                "IDP_REFRESH_TOKEN_TTL".to_owned(),
                self.refresh_token_ttl.to_string(),
            ),
            (
                "IDP_ROTATE_REFRESH_TOKENS".to_owned(),
                bool_env(self.rotate_refresh_tokens),
            ),
            ("IDP_PKCE_REQUIRED".to_owned(), bool_env(self.pkce_required)),
            ("IDP_SKIP_CONSENT".to_owned(), bool_env(self.skip_consent)),
            ("IDP_WATCH_STDIN".to_owned(), "1".to_owned()),
        ];
        if let Some(uri) = &self.backchannel_logout_uri {
            env.push(("IDP_BACKCHANNEL_LOGOUT_URI".to_owned(), uri.clone()));
        }
        if let Some((cert, key)) = &self.tls {
            env.push(("IDP_TLS_CERT".to_owned(), cert.display().to_string()));
            env.push(("IDP_TLS_KEY".to_owned(), key.display().to_string()));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }
}

fn bool_env(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// A running provider; killed when dropped.
pub struct Idp {
    /// `http(s)://HOST:PORT`, no trailing slash.
    pub issuer: String,
    pub port: u16,
    /// `kid` of the RS256 signing key.
    pub kid: String,
    /// PKCS#8 PEM of the signing key, to mint tokens "signed by the provider".
    pub private_key_pem: String,
    child: Option<Child>,
    // Keeps node's stdin open: server.mjs exits when it closes (test process died).
    stdin_keepalive: Option<ChildStdin>,
    extra_ca_file: Option<tempfile::NamedTempFile>,
    http: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct Ready {
    issuer: String,
    port: u16,
    kid: String,
    private_key_pem: String,
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

/// Installs tests/idp/node_modules with `npm ci` when it is missing or does
/// not match the lock file. Once per process, and under a file lock so that
/// parallel test processes (nextest) do not install over each other.
fn ensure_node_modules() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let dir = idp_dir();
        if node_modules_current(&dir) {
            return Ok(());
        }
        let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ssogate-idp-npm.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        let outcome = if node_modules_current(&dir) {
            Ok(())
        } else {
            eprintln!("[idp] running `npm ci` in {}", dir.display());
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(std::io::stderr()))
                .stderr(Stdio::inherit())
                .status();
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("`npm ci` in {} failed: {s}", dir.display())),
                Err(e) => Err(format!("cannot run `npm ci` (is node/npm installed?): {e}")),
            }
        };
        let _ = lock.unlock();
        outcome
    });
    if let Err(e) = result {
        panic!("test provider setup: {e}");
    }
}

/// node_modules/oidc-provider is there and has the version the lock file pins.
fn node_modules_current(dir: &Path) -> bool {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    let Some(installed) = read(dir.join("node_modules/oidc-provider/package.json")) else {
        return false;
    };
    let Some(lock) = read(dir.join("package-lock.json")) else {
        return false;
    };
    let want = &lock["packages"]["node_modules/oidc-provider"]["version"];
    want.is_string() && installed["version"] == *want
}

/// Why one start of the provider did not come up.
struct Failed {
    why: String,
    /// No ready line in time while node kept running: worth another try.
    hung: bool,
    stderr: String,
}

/// Spawns `cmd` once and reads its ready line.
async fn launch(
    cmd: &mut Command,
) -> Result<(Child, Ready, BufReader<tokio::process::ChildStdout>), Failed> {
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start `node` for the test provider (is node installed?): {e}")
    });

    let tail: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let stderr_tail = Arc::clone(&tail);
    let port_label: Arc<OnceLock<u16>> = Arc::new(OnceLock::new());
    let label = Arc::clone(&port_label);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match label.get() {
                Some(port) => eprintln!("[idp:{port}] {line}"),
                None => eprintln!("[idp] {line}"),
            }
            let mut t = stderr_tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    });

    let stdout = child.stdout.take().expect("piped stdout");
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    let read = tokio::time::timeout(READY_TIMEOUT, stdout.read_line(&mut line)).await;
    let (failure, hung) = match &read {
        Err(_) => (
            Some(format!("no ready line within {READY_TIMEOUT:?}")),
            true,
        ),
        Ok(Err(e)) => (Some(format!("reading its stdout failed: {e}")), false),
        Ok(Ok(0)) => (Some("it exited before it was ready".to_owned()), false),
        Ok(Ok(_)) => (None, false),
    };
    let ready = match failure {
        None => serde_json::from_str::<Ready>(line.trim())
            .map_err(|e| format!("bad ready line ({e}): {line:?}")),
        Some(f) => Err(f),
    };
    match ready {
        Ok(r) => {
            let _ = port_label.set(r.port);
            Ok((child, r, stdout))
        }
        Err(why) => {
            let _ = child.start_kill();
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            // Let the stderr task catch up with what node wrote last.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stderr: Vec<&str> = t.iter().map(String::as_str).collect();
            Err(Failed {
                why: format!("{why}; exit: {status:?}"),
                hung,
                stderr: stderr.join("\n"),
            })
        }
    }
}

impl Idp {
    /// Starts `node tests/idp/server.mjs` and waits for its ready line. A
    /// start that stays silent past [`READY_TIMEOUT`] is killed and tried
    /// again (at most [`START_ATTEMPTS`] times in all): a cold CI machine has
    /// once left a node start hanging with nothing on stderr while every other
    /// start around it took half a second, and the provider is the tests'
    /// fixture, not what they test. Panics with each attempt's reason and the
    /// provider's stderr when no attempt comes up.
    pub async fn start(opts: &IdpOptions) -> Idp {
        ensure_node_modules();
        let dir = idp_dir();

        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .envs(opts.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let extra_ca = opts.extra_ca_pem.as_ref().map(|pem| {
            let mut f = tempfile::NamedTempFile::new().expect("temp file for NODE_EXTRA_CA_CERTS");
            f.write_all(pem.as_bytes())
                .expect("write NODE_EXTRA_CA_CERTS");
            f.flush().expect("flush NODE_EXTRA_CA_CERTS");
            f
        });
        if let Some(f) = &extra_ca {
            cmd.env("NODE_EXTRA_CA_CERTS", f.path());
        }

        let mut reasons = Vec::new();
        let (mut child, ready, stdout) = loop {
            match launch(&mut cmd).await {
                Ok(up) => break up,
                Err(Failed { why, hung, stderr }) => {
                    reasons.push(format!(
                        "attempt {}: {why}\n--- its stderr ---\n{stderr}",
                        reasons.len() + 1
                    ));
                    if !hung || reasons.len() == START_ATTEMPTS {
                        panic!(
                            "test provider (node {}/server.mjs) did not start:\n{}",
                            dir.display(),
                            reasons.join("\n")
                        );
                    }
                    eprintln!("[idp] {}; starting it again", reasons.join("; "));
                }
            }
        };
        let port = ready.port;
        // Keep draining stdout so node never writes into a closed pipe.
        tokio::spawn(async move {
            let mut stdout = stdout;
            let mut rest = String::new();
            while let Ok(n) = stdout.read_line(&mut rest).await {
                if n == 0 {
                    break;
                }
                eprint!("[idp:{port} stdout] {rest}");
                rest.clear();
            }
        });

        let http = reqwest::Client::builder()
            // Only for the /test/ hooks; the provider's certificate is the test's business.
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client");

        Idp {
            issuer: ready.issuer,
            port: ready.port,
            kid: ready.kid,
            private_key_pem: ready.private_key_pem,
            stdin_keepalive: child.stdin.take(),
            child: Some(child),
            extra_ca_file: extra_ca,
            http,
        }
    }

    /// `<issuer><path>`, e.g. `idp.url("/.well-known/openid-configuration")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer, path)
    }

    /// Kills the provider and waits for it to exit. Idempotent.
    pub async fn stop(&mut self) {
        self.stdin_keepalive = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// `GET /test/stats`: `{"token": {"authorization_code": n, "refresh_token": n,
    /// "client_credentials": n}, "token_errors": n, "token_error_codes": {code: n},
    /// "backchannel_logout": {"success": n, "error": n}, "end_session": n,
    /// "logins": n, "failed_logins": n}`.
    pub async fn stats(&self) -> serde_json::Value {
        let resp = self
            .http
            .get(self.url("/test/stats"))
            .send()
            .await
            .expect("GET /test/stats");
        assert!(
            resp.status().is_success(),
            "GET /test/stats: {}",
            resp.status()
        );
        resp.json().await.expect("stats JSON")
    }

    /// Count of successful token-endpoint grants of one type
    /// (`authorization_code`, `refresh_token`, `client_credentials`).
    pub async fn token_count(&self, grant_type: &str) -> u64 {
        self.stats().await["token"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// `POST /test/reset-stats`.
    pub async fn reset_stats(&self) {
        let resp = self
            .http
            .post(self.url("/test/reset-stats"))
            .send()
            .await
            .expect("POST /test/reset-stats");
        assert!(
            resp.status().is_success(),
            "POST /test/reset-stats: {}",
            resp.status()
        );
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
