//! `homeport`: every Homeport service in one process, with embedded defaults (SQLite, a local
//! encrypted secret file, and a NATS server started on demand) for laptops, demos and small
//! fleets. `homeport demo` adds a simulated fleet and shows what is connected.

mod demo;
mod nats;

use homeport_contracts::access::Role;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use homeport_amt_sim::{Fleet, SimConfig};
use homeport_cira_ingress::{bootstrap, IngressConfig};
use homeport_contracts::presence::Presence;

#[derive(Parser, Debug)]
#[command(
    name = "homeport",
    version,
    about = "Homeport all-in-one: manage Intel AMT fleets over CIRA"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    ingress: IngressConfig,
    /// Start a private NATS server: "auto" (when none answers at --nats-url), "always", "never".
    #[arg(long, env = "HOMEPORT_EMBEDDED_NATS", default_value = "auto")]
    embedded_nats: String,
    /// Data directory of the embedded NATS server and the generated token secret.
    #[arg(long, env = "HOMEPORT_DATA_DIR", default_value = "homeport-data")]
    data_dir: std::path::PathBuf,
    /// Device API (gRPC) listen address.
    #[arg(long, env = "HOMEPORT_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    grpc_listen: SocketAddr,
    /// Audit API (gRPC: stored and live events) listen address.
    #[arg(
        long,
        env = "HOMEPORT_AUDIT_GRPC_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    audit_grpc_listen: SocketAddr,
    /// Remote provisioning: the rpc clients' WebSocket (wss) listen address (8443 here: the
    /// REST API and the dashboard take 8080).
    #[arg(long, env = "HOMEPORT_RPS_LISTEN", default_value = "0.0.0.0:8443")]
    rps_listen: SocketAddr,
    /// The Open AMT REST API and the web dashboard (HTTP).
    #[arg(
        long,
        env = "HOMEPORT_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    gateway_listen: SocketAddr,
    /// User name of the dashboard and of `POST /api/v1/authorize`.
    #[arg(long, env = "HOMEPORT_GATEWAY_ADMIN_USER", default_value = "admin")]
    gateway_admin_user: String,
    /// Tenant the dashboard's sign-in is scoped to (the demo fleet's by default).
    #[arg(long, env = "HOMEPORT_GATEWAY_ADMIN_TENANT", default_value = "demo")]
    gateway_admin_tenant: String,
    /// Remote provisioning admin API (gRPC: profiles, CIRA configs, domains, wireless).
    #[arg(
        long,
        env = "HOMEPORT_RPS_GRPC_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    rps_grpc_listen: SocketAddr,
    /// HS256 secret for bearer tokens; generated into the data directory when not given.
    #[arg(long, env = "HOMEPORT_JWT_HS256_SECRET_FILE")]
    jwt_hs256_secret_file: Option<std::path::PathBuf>,
    /// RS256 public key (PEM) for bearer tokens, in addition to or instead of HS256.
    #[arg(long, env = "HOMEPORT_JWT_RS256_PUBLIC_KEY_FILE")]
    jwt_rs256_public_key_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the services (the default).
    Serve,
    /// Run the services plus a simulated fleet, and print the connected devices.
    Demo {
        /// Simulated devices.
        #[arg(long, default_value_t = 25)]
        devices: u64,
        /// Of those, how many start unprovisioned and are activated through rps (CCM with
        /// CIRA) instead of being enrolled.
        #[arg(long, default_value_t = 5)]
        activate: u64,
        /// Stop after this many seconds (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let valid = cli
        .common
        .validate()
        .and_then(|()| cli.ingress.validate().map_err(anyhow::Error::msg))
        .and_then(|()| match cli.embedded_nats.as_str() {
            "auto" | "always" | "never" => Ok(()),
            other => anyhow::bail!("--embedded-nats must be auto, always or never, not {other:?}"),
        });
    let log = cli.common.logging();
    homeport_runtime::run_main("homeport", valid, &log, || run(cli));
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let _nats_server = nats::ensure(&mut cli.common, &cli.embedded_nats, &cli.data_dir).await?;
    let node_id = cli
        .ingress
        .node_id
        .clone()
        .unwrap_or_else(|| "homeport".into());
    let served = bootstrap::serve(&cli.common, &cli.ingress, node_id).await?;
    let (ingress, store, secrets) = (&served.ingress, &served.store, &served.secrets);
    let names = cli.common.names();
    let secret_file = match &cli.jwt_hs256_secret_file {
        Some(f) => f.clone(),
        None => token_secret(&cli.data_dir)?,
    };
    // Each service in this process signs in to NATS as its own role.
    let wait = Duration::from_secs(30);
    let command_nats = cli
        .common
        .connect_nats(Role::Command, "homeport/mps-command", wait)
        .await?;
    let audit_nats = cli
        .common
        .connect_nats(Role::Audit, "homeport/audit", wait)
        .await?;
    let rps_nats = cli
        .common
        .connect_nats(Role::Rps, "homeport/rps", wait)
        .await?;
    let command = start_command(&cli, &secret_file, &command_nats, store, secrets).await?;
    let audit = start_audit(&cli, &secret_file, &audit_nats, store).await?;
    let rps = start_rps(&cli, &secret_file, &rps_nats, store, secrets).await?;
    let (gateway, first_password) = start_gateway(&cli, &secret_file).await?;
    // The demo asks devices through the tunnel as mps-command does.
    let nats = &command_nats;
    println!(
        "Homeport is running: CIRA on {}, device API (gRPC) on {}, audit API on {}, provisioning on wss://{}/activate (admin gRPC {}), REST API on http://{}/api/v1, health and metrics on http://{}/metrics, NATS {}, database {}",
        ingress.local_addr(),
        cli.grpc_listen,
        cli.audit_grpc_listen,
        cli.rps_listen,
        cli.rps_grpc_listen,
        cli.gateway_listen,
        cli.ingress.health_listen,
        cli.common.nats_url,
        homeport_runtime::redact_url(&cli.common.database_url().unwrap_or_default()),
    );
    println!(
        "  token for homeportctl: export HOMEPORT_TOKEN=$(homeportctl token --secret-file {} --tenant demo)",
        secret_file.display()
    );
    print_sign_in(&cli, first_password.as_deref());

    match cli.command {
        None | Some(Command::Serve) => {
            homeport_runtime::shutdown_signal().await;
        }
        Some(Command::Demo {
            devices,
            activate,
            duration,
        }) => {
            let activate = activate.min(devices);
            let enrolled = devices - activate;
            let mut cfg = SimConfig::new(cira_target(ingress.local_addr()), enrolled);
            cfg.ramp_per_second = 200;
            let ids: Vec<_> = cfg.identities().collect();
            homeport_amt_sim::enroll(store, secrets, &ids, "demo").await?;
            println!("Enrolled {enrolled} simulated devices (tenant \"demo\"); connecting them over CIRA…");
            let fleet = Fleet::start(cfg)?;
            let provisioned = if activate > 0 {
                println!("Activating {activate} unprovisioned simulated PCs through rps (CCM, then CIRA)…");
                match demo::activate(
                    &cli,
                    &secret_file,
                    cira_target(ingress.local_addr()),
                    activate,
                )
                .await
                {
                    Ok(f) => Some(f),
                    Err(e) => {
                        println!("Provisioning demo failed: {e:#}");
                        None
                    }
                }
            } else {
                None
            };
            let presence = homeport_contracts::presence::presence_bucket(
                &async_nats::jetstream::new(nats.clone()),
                &names,
                1,
            )
            .await?;
            let started = Instant::now();
            let stop = homeport_runtime::stop_after(duration);
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs(3));
            let mut shown = false;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {
                        let connected = fleet.stats().connected()
                            + provisioned.as_ref().map_or(0, |f| f.stats().connected());
                        println!("[{:>4.0}s] {connected}/{devices} simulated devices connected", started.elapsed().as_secs_f64());
                        if connected == devices && !shown {
                            shown = true;
                            print_presence(&presence).await;
                            probe_tunnel(nats, &names, &fleet).await;
                            probe_api(cli.grpc_listen, &secret_file, &fleet).await;
                            // Give the audit worker a moment to commit the connect events.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            if let Ok(n) = store.count_audit_events().await {
                                println!("Audit trail: {n} events stored so far (AuditService on {}; live: nats sub '{}.evt.demo.>')", cli.audit_grpc_listen, names.prefix());
                            }
                            println!("Press Ctrl-C to stop.");
                        }
                    }
                }
            }
            fleet.stop().await;
            if let Some(f) = provisioned {
                f.stop().await;
            }
        }
    }
    println!("Shutting down: draining CIRA sessions…");
    gateway.stop.cancel();
    let _ = gateway.task.await;
    rps.stop.cancel();
    let _ = rps.task.await;
    command.stop.cancel();
    let _ = command.task.await;
    audit.stop.cancel();
    let _ = audit.task.await;
    served.shutdown().await;
    Ok(())
}

/// A service running in this process.
struct RunningCommand {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The embedded deployment's token secret: 32 random bytes, created once, mode 0600.
fn token_secret(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("jwt.secret");
    if path.exists() {
        return Ok(path);
    }
    let mut raw = [0u8; 32];
    openssl::rand::rand_bytes(&mut raw)?;
    let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// Starts the device API (mps-command) in this process.
async fn start_command(
    cli: &Cli,
    secret_file: &std::path::Path,
    nats: &async_nats::Client,
    store: &homeport_store::Store,
    secrets: &homeport_secrets::DynSecretStore,
) -> anyhow::Result<RunningCommand> {
    let config = homeport_mps_command::CommandConfig {
        grpc_listen: cli.grpc_listen,
        health_listen: cli.ingress.health_listen,
        exchange_timeout_ms: 10_000,
        jwt: homeport_auth::JwtArgs {
            rs256_public_key_file: cli.jwt_rs256_public_key_file.clone(),
            ..homeport_auth::JwtArgs::hs256(secret_file.to_path_buf())
        },
        command_timeout_ms: 120_000,
        bulk_concurrency: 64,
    };
    let auth = config.jwt.authenticator()?;
    let service = homeport_mps_command::MpsCommand::start(homeport_mps_command::CommandParts {
        config,
        instance: "homeport".into(),
        names: cli.common.names(),
        nats: nats.clone(),
        store: store.clone(),
        secrets: secrets.clone(),
        auth,
        stream_limits: cli.common.stream_limits(),
    })
    .await?;
    let listener = homeport_runtime::bind(cli.grpc_listen, "gRPC port").await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = service.serve(listener, s.cancelled_owned()).await {
            tracing::error!(error = %e, "device API stopped");
        }
        service.shutdown().await;
    });
    Ok(RunningCommand { stop, task })
}

/// Starts remote provisioning (rps: rpc clients and its admin API) in this process.
async fn start_rps(
    cli: &Cli,
    secret_file: &std::path::Path,
    nats: &async_nats::Client,
    store: &homeport_store::Store,
    secrets: &homeport_secrets::DynSecretStore,
) -> anyhow::Result<RunningCommand> {
    let config = homeport_rps::RpsConfig {
        listen: cli.rps_listen,
        tls_cert_file: None,
        tls_key_file: None,
        grpc_listen: cli.rps_grpc_listen,
        health_listen: cli.ingress.health_listen,
        jwt: homeport_auth::JwtArgs {
            rs256_public_key_file: cli.jwt_rs256_public_key_file.clone(),
            ..homeport_auth::JwtArgs::hs256(secret_file.to_path_buf())
        },
        step_timeout_secs: 12,
        flow_timeout_secs: 600,
        handshake_timeout_secs: 10,
        max_message_bytes: 102_400,
        max_flows: 10_000,
        max_handshakes: 1024,
        max_handshakes_per_source: 64,
        setup_settle_ms: 0,
    };
    let auth = config.jwt.authenticator()?;
    let clients = homeport_runtime::bind(cli.rps_listen, "the rpc listener").await?;
    let grpc = homeport_runtime::bind(cli.rps_grpc_listen, "rps gRPC port").await?;
    let service = homeport_rps::Rps::start(homeport_rps::RpsParts {
        config,
        instance: "homeport".into(),
        names: cli.common.names(),
        nats: nats.clone(),
        store: store.clone(),
        secrets: secrets.clone(),
        auth,
        stream_limits: cli.common.stream_limits(),
    })
    .await?;
    service.serve_clients(clients);
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = service.serve_admin(grpc, s.cancelled_owned()).await {
            tracing::error!(error = %e, "rps admin API stopped");
        }
        service.shutdown(Duration::from_secs(10)).await;
    });
    Ok(RunningCommand { stop, task })
}

/// The admin password's hash file in the data directory; on first start a random password
/// is generated, only its hash is written, and the password is returned to be shown once.
fn admin_password(dir: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, Option<String>)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("gateway-admin.hash");
    if path.exists() {
        return Ok((path, None));
    }
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut raw = [0u8; 18];
    openssl::rand::rand_bytes(&mut raw)?;
    let password: String = raw
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    let line = homeport_gateway::auth::hash_password(&password)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(format!("{line}\n").as_bytes())?;
    Ok((path, Some(password)))
}

/// A loopback URL for an in-process gRPC listener.
fn local_url(addr: SocketAddr) -> String {
    format!("http://{}", cira_target(addr))
}

/// Starts the REST API and the dashboard (gateway) in this process, in front of the gRPC
/// services above; returns the admin password when it was generated now.
async fn start_gateway(
    cli: &Cli,
    secret_file: &std::path::Path,
) -> anyhow::Result<(RunningCommand, Option<String>)> {
    let (hash_file, first_password) = admin_password(&cli.data_dir)?;
    let jwt = homeport_auth::JwtArgs {
        rs256_public_key_file: cli.jwt_rs256_public_key_file.clone(),
        ..homeport_auth::JwtArgs::hs256(secret_file.to_path_buf())
    };
    let config = homeport_gateway::GatewayConfig {
        listen: cli.gateway_listen,
        health_listen: cli.ingress.health_listen,
        device_api: local_url(cli.grpc_listen),
        audit_api: local_url(cli.audit_grpc_listen),
        rps_api: local_url(cli.rps_grpc_listen),
        jwt: jwt.clone(),
        admin_user: cli.gateway_admin_user.clone(),
        admin_password_hash_file: Some(hash_file.clone()),
        admin_tenant: cli.gateway_admin_tenant.clone(),
        token_ttl_minutes: 1440,
        max_body_bytes: 102_400,
        call_timeout_secs: 130,
        stream_buffer: 256,
        write_timeout_secs: 30,
        max_streams: 1000,
        max_streams_per_tenant: 200,
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let gateway = homeport_gateway::Gateway::new(homeport_gateway::GatewayParts {
        auth: jwt.authenticator()?,
        signing_secret: Some(homeport_auth::read_hs256_secret(secret_file)?),
        admin_password: Some(homeport_gateway::auth::PasswordHash::read(&hash_file)?),
        config,
    })?;
    let listener = homeport_runtime::bind(cli.gateway_listen, "the REST API port").await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = gateway.serve(listener, s.cancelled_owned()).await {
            tracing::error!(error = %e, "REST API stopped");
        }
    });
    Ok((RunningCommand { stop, task }, first_password))
}

/// Where the dashboard is and how to sign in.
fn print_sign_in(cli: &Cli, first_password: Option<&str>) {
    let url = format!("http://{}/", cira_target(cli.gateway_listen));
    match first_password {
        Some(pw) => println!(
            "  dashboard and REST API: {url} (sign in as {} / {pw}; shown once, only its hash is kept in {})",
            cli.gateway_admin_user,
            cli.data_dir.join("gateway-admin.hash").display()
        ),
        None => println!(
            "  dashboard and REST API: {url} (sign in as {}; the password was shown at the first start; delete {} and restart for a new one)",
            cli.gateway_admin_user,
            cli.data_dir.join("gateway-admin.hash").display()
        ),
    }
}

/// Starts the audit worker and its API (AuditService) in this process.
async fn start_audit(
    cli: &Cli,
    secret_file: &std::path::Path,
    nats: &async_nats::Client,
    store: &homeport_store::Store,
) -> anyhow::Result<RunningCommand> {
    let jwt = homeport_auth::JwtArgs {
        rs256_public_key_file: cli.jwt_rs256_public_key_file.clone(),
        ..homeport_auth::JwtArgs::hs256(secret_file.to_path_buf())
    };
    let auth = jwt.authenticator()?;
    let audit = homeport_audit::Audit::start(homeport_audit::AuditParts {
        config: homeport_audit::AuditConfig::with_jwt(jwt),
        stream_limits: cli.common.stream_limits(),
        names: cli.common.names(),
        nats: nats.clone(),
        store: store.clone(),
        auth,
    });
    let listener = homeport_runtime::bind(cli.audit_grpc_listen, "audit gRPC port").await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = audit.serve(listener, s.cancelled_owned()).await {
            tracing::error!(error = %e, "audit API stopped");
        }
        audit.shutdown().await;
    });
    Ok(RunningCommand { stop, task })
}

/// Asks the first device for its power state and hardware through the real gRPC API.
async fn probe_api(addr: SocketAddr, secret_file: &std::path::Path, fleet: &Fleet) {
    use homeport_proto::device::v1 as pb;
    let Some(id) = fleet.identities().first() else {
        return;
    };
    let result = async {
        let secret = homeport_auth::read_hs256_secret(secret_file)?;
        let token = homeport_mps_command::auth::mint_hs256(&secret, "homeport-demo", "demo", 300)?;
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
        let mut api = pb::device_service_client::DeviceServiceClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            },
        );
        let started = Instant::now();
        let power = api
            .get_power_state(pb::DeviceRef { guid: id.guid.clone() })
            .await?
            .into_inner();
        let power_ms = started.elapsed().as_secs_f64() * 1000.0;
        let hw = api
            .get_hardware_info(pb::DeviceRef { guid: id.guid.clone() })
            .await?
            .into_inner();
        println!(
            "Device API: {} is {} (power state {}, {power_ms:.1} ms via gRPC → NATS → CIRA → WS-Man); hardware {} {}, {} CPU(s), {} DIMM(s)",
            id.guid,
            power.power_state_text,
            power.power_state,
            hw.manufacturer,
            hw.model,
            hw.processors.len(),
            hw.memory.len()
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        println!("Device API check failed: {e:#}");
    }
}

/// The ingress listens on all interfaces by default; the simulator dials loopback.
fn cira_target(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    }
}

/// Prints the presence bucket: what NATS knows is connected, and where.
async fn print_presence(presence: &async_nats::jetstream::kv::Store) {
    let Ok(mut keys) = presence.keys().await else {
        return;
    };
    let mut rows = Vec::new();
    while let Some(Ok(guid)) = keys.next().await {
        if let Ok(Some(v)) = presence.get(&guid).await {
            if let Ok(p) = serde_json::from_slice::<Presence>(&v) {
                rows.push((guid, p));
            }
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "\n{:<38} {:<8} {:<12} {:<22} CONNECTED AT",
        "DEVICE", "TENANT", "NODE", "REMOTE"
    );
    for (guid, p) in rows.iter().take(20) {
        println!(
            "{guid:<38} {:<8} {:<12} {:<22} {}",
            p.tenant, p.node, p.remote, p.connected_at
        );
    }
    if rows.len() > 20 {
        println!("… and {} more", rows.len() - 20);
    }
    println!();
}

/// Sends one HTTP request through the CIRA tunnel of the first device to show the path works.
async fn probe_tunnel(nats: &async_nats::Client, names: &homeport_contracts::Names, fleet: &Fleet) {
    let Some(id) = fleet.identities().first() else {
        return;
    };
    let client =
        match homeport_contracts::tunnel::TunnelClient::new(nats.clone(), names.clone(), 1).await {
            Ok(c) => c,
            Err(e) => return println!("Tunnel check failed: {e}"),
        };
    let request = format!(
        "POST /wsman HTTP/1.1\r\nHost: {}:16992\r\nContent-Length: 0\r\n\r\n",
        id.guid
    );
    let started = Instant::now();
    match client
        .request(
            &id.guid,
            None,
            request.into_bytes().into(),
            Duration::from_secs(10),
        )
        .await
    {
        Ok(reply) => {
            let text = String::from_utf8_lossy(&reply);
            let status = text.lines().next().unwrap_or_default();
            println!(
                "Tunnel check: device {} answered \"{status}\" (NATS → ingress → APF channel → device) in {:.1} ms",
                id.guid,
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        Err(e) => println!("Tunnel check failed: {e}"),
    }
}
