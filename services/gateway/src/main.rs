//! `gateway`: the REST API, live events and the web dashboard until SIGTERM;
//! `gateway hash-password` turns a password on standard input into the admin hash line.

use std::io::Read as _;

use clap::{Parser, Subcommand};
use homeport_gateway::{auth, Gateway, GatewayConfig, GatewayParts};
use tokio_util::sync::CancellationToken;

/// How long requests in flight may take after the stop signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "Homeport gateway: the Open AMT REST API, live events and the web dashboard"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    gateway: GatewayConfig,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "HOMEPORT_LOG", default_value = "info")]
    log: String,
    /// Log lines as text ("text") or one JSON object per line ("json").
    #[arg(long, env = "HOMEPORT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Read a password on standard input and print its hash line for
    /// --admin-password-hash-file (the password itself is never stored).
    HashPassword,
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        let mut pw = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut pw) {
            eprintln!("gateway: reading the password: {e}");
            std::process::exit(1);
        }
        let pw = pw.strip_suffix('\n').unwrap_or(&pw);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        if pw.chars().count() < 8 {
            eprintln!("gateway: the password must have at least 8 characters");
            std::process::exit(2);
        }
        match auth::hash_password(pw) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("gateway: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let valid = cli.gateway.validate().map_err(anyhow::Error::msg);
    let log = homeport_runtime::Logging {
        filter: cli.log.clone(),
        json: cli.log_format == "json",
    };
    homeport_runtime::run_main("gateway", valid, &log, || run(cli.gateway));
}

async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let auth = config.jwt.authenticator()?;
    let signing_secret = match &config.jwt.hs256_secret_file {
        Some(f) => Some(homeport_auth::read_hs256_secret(f)?),
        None => None,
    };
    let admin_password = match &config.admin_password_hash_file {
        Some(f) => Some(auth::PasswordHash::read(f)?),
        None => None,
    };
    let listener = homeport_runtime::bind(config.listen, "the HTTP port").await?;
    let health = homeport_runtime::bind(config.health_listen, "health port").await?;
    tracing::info!(
        listen = %config.listen,
        device_api = %config.device_api,
        audit_api = %config.audit_api,
        rps_api = %config.rps_api,
        sign_in = admin_password.is_some(),
        "serving"
    );
    let gateway = Gateway::new(GatewayParts {
        config,
        auth,
        signing_secret,
        admin_password,
    })?;
    let stop_health = CancellationToken::new();
    tokio::spawn(homeport_telemetry::serve_health(
        health,
        gateway.observable(),
        stop_health.clone(),
    ));
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        homeport_runtime::shutdown_signal().await;
        signal.cancel();
    });
    let served = gateway.serve(listener, stop.clone().cancelled_owned());
    tokio::pin!(served);
    // After SIGTERM the listener closes and live feeds end at once; requests in flight get
    // DRAIN to finish.
    tokio::select! {
        r = &mut served => r?,
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        } => tracing::warn!("requests still in flight {} s after the stop signal; leaving them", DRAIN.as_secs()),
    }
    stop_health.cancel();
    tracing::info!("stopped");
    Ok(())
}
