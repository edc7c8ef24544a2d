//! homeportctl: the operator CLI for Homeport's device API (gRPC, `proto/homeport/device/v1`).
//! The binary is `main.rs`; the library lets end-to-end tests run whole command lines.

mod client;
mod commands;
mod error;
mod names;
mod natskeys;
mod output;
mod secret;
mod time;
mod token;

#[cfg(test)]
mod tests;

use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use tokio::time::Instant;

pub use crate::error::CliError;
use crate::output::{Format, Output};
use crate::secret::Secret;

#[derive(Parser, Debug)]
#[command(
    name = "homeportctl",
    version,
    about = "Operator CLI for the Homeport device API"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: TopLevel,
}

#[derive(clap::Args, Debug)]
struct Global {
    /// Device API (mps-command) gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "HOMEPORT_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// Provisioning admin API (rps) gRPC endpoint, for profiles, cira-configs, domains and
    /// wireless.
    #[arg(
        long,
        global = true,
        env = "HOMEPORT_RPS_ENDPOINT",
        default_value = "http://127.0.0.1:50053"
    )]
    rps_endpoint: String,
    /// Bearer JWT sent with every call (prefer the environment: argv is visible to other
    /// local users).
    #[arg(long, global = true, env = "HOMEPORT_TOKEN", hide_env_values = true)]
    token: Option<Secret>,
    /// Print responses as JSON instead of tables.
    #[arg(long, global = true, env = "HOMEPORT_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
    /// Give up after this many seconds (connecting and every call included).
    #[arg(
        long,
        global = true,
        env = "HOMEPORT_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    timeout_secs: u64,
}

#[derive(Subcommand, Debug)]
enum TopLevel {
    #[command(flatten)]
    Api(commands::Command),
    /// Mint an HS256 JWT for development and embedded setups.
    Token(token::TokenArgs),
    /// Make one NATS NKey per service for the shipped NATS server configuration.
    NatsKeys(natskeys::NatsKeysArgs),
    /// Print the NATS server configuration (users and permissions) for a subject prefix.
    NatsConfig(natskeys::NatsConfigArgs),
}

/// Runs a whole command line (argv\[0\] is the program name), printing responses to `sink`.
/// Usage errors come back as clap's message with exit code 2.
pub fn run_argv(argv: &[&str], sink: Box<dyn std::io::Write + Send>) -> Result<(), CliError> {
    let cli = Cli::try_parse_from(argv).map_err(|e| CliError::Usage(e.to_string()))?;
    run(cli, sink)
}

/// Runs a whole command line and returns what it printed (for tests and embedding).
pub fn run_captured(argv: &[&str]) -> (Result<(), CliError>, String) {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let result = run_argv(argv, Box::new(buffer.clone()));
    let bytes = buffer
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    (result, String::from_utf8_lossy(&bytes).into_owned())
}

/// The binary's entry point: parse, run, print one error line, exit.
pub fn main_entry() -> ! {
    let cli = Cli::parse();
    let code = match run(cli, Box::new(std::io::stdout())) {
        Ok(()) => 0,
        Err(e) if e.is_broken_pipe() => 0,
        Err(e) => {
            eprintln!("homeportctl: {}", e.line());
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// Runs the parsed command line, printing responses to `sink`.
fn run(cli: Cli, mut sink: Box<dyn std::io::Write + Send>) -> Result<(), CliError> {
    let command = match cli.command {
        TopLevel::Token(args) => return Ok(token::run(&args, &mut sink)?),
        TopLevel::NatsKeys(args) => return Ok(natskeys::run(&args, &mut sink)?),
        TopLevel::NatsConfig(args) => return Ok(natskeys::config(&args, &mut sink)?),
        TopLevel::Api(command) => command,
    };
    command.check()?;
    let Global {
        endpoint,
        rps_endpoint,
        token,
        json,
        timeout_secs,
    } = cli.global;
    let endpoint = if command.is_provisioning() {
        rps_endpoint
    } else {
        endpoint
    };
    let format = if json { Format::Json } else { Format::Human };
    let out = Output::new(format, sink);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(timeout_secs);
        let work = async {
            let mut api = client::connect(&endpoint, token.as_ref(), deadline, out).await?;
            commands::run(command, &mut api).await
        };
        let timed_out = || {
            let message = format!("no answer from {endpoint} within {timeout_secs}s");
            CliError::from(tonic::Status::deadline_exceeded(message))
        };
        match tokio::time::timeout_at(deadline, work).await {
            // tonic servers answer an expired `grpc-timeout` with CANCELLED. Their clock
            // started after ours, so such an answer arrives at or after our deadline and is
            // our own timeout, reported as such.
            Ok(Err(CliError::Status(s)))
                if s.code() == tonic::Code::Cancelled && Instant::now() >= deadline =>
            {
                Err(timed_out())
            }
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    })
}
