//! The `ssogate` binary: read configuration, start telemetry, serve until a
//! signal, drain. `ssogate check-config` validates and reaches the provider.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use ssogate::{App, Config, check, telemetry};

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("--version" | "-V")) {
        eprintln!("ssogate {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !matches!(command.as_deref(), None | Some("check-config")) {
        eprintln!(
            "usage: ssogate [check-config]  (configuration comes from CT_* environment variables and .env)"
        );
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            errors
                .0
                .iter()
                .for_each(|e| eprintln!("ssogate: configuration error: {e}"));
            return ExitCode::from(2);
        }
    };
    if command.is_none() {
        // Before the runtime: whether its threads gather log lines depends
        // on the level.
        telemetry::init(config.log_format);
        telemetry::log_sink::gather_on_this_thread();
    }
    let Ok(runtime) = ssogate::server::runtime() else {
        eprintln!("ssogate: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(async move {
        if command.is_some() {
            return match check::check(&config).await {
                Ok(lines) => {
                    lines.iter().for_each(|l| eprintln!("{l}"));
                    ExitCode::SUCCESS
                }
                Err(lines) => {
                    lines.iter().for_each(|l| eprintln!("ssogate: {l}"));
                    ExitCode::FAILURE
                }
            };
        }
        match App::build(config).await {
            Ok(app) => {
                let shutdown = shutdown_signal();
                app.run(shutdown).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ssogate: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // A name lookup still blocking (a provider that cannot be resolved) must
    // not hold the exit back.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    telemetry::log_sink::flush();
    code
}

/// Registers for SIGINT and SIGTERM at once, and resolves at the first of
/// them. Registering here, before the gate serves, matters: registered at
/// the first poll, after the serving threads had begun to answer, a signal
/// right after the first answer either met the default action (killed, not
/// drained) or, worse, arrived while signal-hook was installing its handler
/// and was dropped: the gate then never stopped (CI's SIGINT test caught
/// it; 2 starts in 49 under a busy core, 0 in 300 since).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let first = async |s: std::io::Result<tokio::signal::unix::Signal>| match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            };
            tokio::select! { () = first(interrupt) => {}, () = first(terminate) => {} }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}
