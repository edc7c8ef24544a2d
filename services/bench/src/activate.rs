//! `homeport-bench activate`: remote provisioning throughput. Starts an rps process on this
//! machine's NATS and PostgreSQL, creates a CIRA configuration and a CCM profile through its
//! admin API, then runs N simulated PCs (each an rpc client over its own TLS WebSocket, with
//! the firmware behind it) through activation with CIRA configuration, C at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use homeport_amt_sim::provision::{RpcClient, SimDevice};
use homeport_proto::provisioning::v1 as pb;
use homeport_proto::provisioning::v1::provisioning_admin_client::ProvisioningAdminClient;
use homeport_secrets::{DynSecretStore, LocalFileConfig, LocalFileStore};
use tonic::transport::Channel;

use crate::command::{spawn, wait_ready, Bearer};
use crate::{free_port, round, sibling};

#[derive(clap::Args, Debug)]
pub struct ActivateArgs {
    /// Simulated PCs to activate.
    #[arg(long, default_value_t = 500)]
    devices: u64,
    /// Activations in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Latency of each WS-Man answer on the PC (LMS round trip), milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// rps wait after Setup (the reference's fixed 12 s is 12000).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// Admin control mode: a domain with a provisioning certificate the PCs trust, AdminSetup
    /// signed per PC, MEBx password.
    #[arg(long)]
    acm: bool,
    #[command(flatten)]
    backends: crate::Backends,
}

const JWT_SECRET: &[u8] = b"homeport-bench-secret-0123456789abcdef";

pub async fn run(args: ActivateArgs) -> anyhow::Result<()> {
    let rps_bin = sibling("rps")?;
    let run = format!("actbench{:06x}", fastrand::u32(..0xff_ffff));
    let dir = std::env::temp_dir().join(format!("homeport-{run}"));
    std::fs::create_dir_all(&dir)?;
    let db = homeport_store::testing::temp_postgres(&args.backends.pg_admin_url, "actbench")
        .await
        .context("creating the bench database")?;
    let result = inner(&args, &run, &dir, &db.url, &rps_bin).await;
    let _ = db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
    crate::remove_nats_state(&args.backends.nats_url, &run).await;
    result
}

async fn inner(
    args: &ActivateArgs,
    run: &str,
    dir: &std::path::Path,
    db_url: &str,
    rps_bin: &std::path::Path,
) -> anyhow::Result<()> {
    let secrets_file = dir.join("secrets.enc");
    let key_file = dir.join("secrets.key");
    let jwt_file = dir.join("jwt.secret");
    std::fs::write(&jwt_file, JWT_SECRET)?;
    let secrets: DynSecretStore = Arc::new(
        LocalFileStore::open(LocalFileConfig::new(secrets_file.clone(), key_file.clone())).await?,
    );
    // The CIRA configuration takes the ingress's root from the shared secret store.
    homeport_cira_ingress::tls::load_or_generate(&secrets, "localhost", &[]).await?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let env = vec![
        ("HOMEPORT_NATS_URL", args.backends.nats_url.clone()),
        ("HOMEPORT_SUBJECT_PREFIX", run.to_string()),
        ("HOMEPORT_DATABASE_URL", db_url.to_string()),
        ("HOMEPORT_DATABASE_POOL", "16".to_string()),
        ("HOMEPORT_SECRETS_FILE", secrets_file.display().to_string()),
        ("HOMEPORT_SECRETS_KEY_FILE", key_file.display().to_string()),
        ("HOMEPORT_HEALTH_LISTEN", health.to_string()),
        ("HOMEPORT_GRPC_LISTEN", grpc.to_string()),
        ("HOMEPORT_RPS_LISTEN", listen.to_string()),
        (
            "HOMEPORT_JWT_HS256_SECRET_FILE",
            jwt_file.display().to_string(),
        ),
        ("HOMEPORT_RPS_SETUP_SETTLE_MS", args.settle_ms.to_string()),
        (
            "HOMEPORT_RPS_MAX_FLOWS",
            (args.concurrency * 2).max(100).to_string(),
        ),
        // Every simulated PC dials from 127.0.0.1: one source, so its budget is the fleet's.
        (
            "HOMEPORT_RPS_MAX_HANDSHAKES",
            (args.concurrency * 2).max(1024).to_string(),
        ),
        (
            "HOMEPORT_RPS_MAX_HANDSHAKES_PER_SOURCE",
            (args.concurrency * 2).max(64).to_string(),
        ),
        ("HOMEPORT_LOG", "warn".to_string()),
    ];
    let rps = spawn(rps_bin, "rps", &env, &[])?;
    wait_ready(health, "rps").await?;
    let token = homeport_mps_command::auth::mint_hs256(JWT_SECRET, "bench", "bench", 3600)?;
    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let mut admin = ProvisioningAdminClient::with_interceptor(channel, Bearer::new(&token)?);
    admin
        .create_cira_config(pb::CiraConfig {
            name: "bench-cira".into(),
            mps_server_address: "ingress.bench.test".into(),
            server_address_format: 201,
            mps_port: 4433,
            username: "benchcira".into(),
            auth_method: 2,
            ..Default::default()
        })
        .await?;
    let pki = if args.acm {
        let pki = homeport_amt_sim::provision::ProvisioningPki::generate(
            "provisioning.sim.homeport.test",
            "bench-pfx-pass",
        )?;
        admin
            .create_domain(pb::Domain {
                name: "bench".into(),
                domain_suffix: "sim.homeport.test".into(),
                provisioning_cert: pki.pfx_b64.clone(),
                provisioning_cert_password: "bench-pfx-pass".into(),
                ..Default::default()
            })
            .await?;
        Some(pki)
    } else {
        None
    };
    admin
        .create_profile(pb::Profile {
            name: "bench".into(),
            activation: if args.acm {
                pb::Activation::Acm
            } else {
                pb::Activation::Ccm
            } as i32,
            generate_random_password: true,
            generate_random_mebx_password: args.acm,
            cira_config_name: "bench-cira".into(),
            dhcp_enabled: true,
            user_consent: if args.acm {
                pb::UserConsent::Kvm
            } else {
                pb::UserConsent::All
            } as i32,
            kvm_enabled: true,
            sol_enabled: true,
            ider_enabled: true,
            ..Default::default()
        })
        .await?;

    let mut client = RpcClient::new(&format!("wss://{listen}/activate"))?;
    client.tenant = "bench".into();
    client.latency = Duration::from_millis(args.latency_ms);
    client.timeout = Duration::from_secs(600);
    let devices: Vec<SimDevice> = (0..args.devices)
        .map(|i| {
            let mut d = SimDevice::unprovisioned(7, i);
            if let Some(pki) = &pki {
                d.trust_root(&pki.root_der);
            }
            d
        })
        .collect();
    let (rss_idle, cpu0) = homeport_telemetry::usage_of(&rps.pid()).unwrap_or_default();
    eprintln!(
        "activating {} PCs, {} at a time…",
        args.devices, args.concurrency
    );
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_idle));
    let sampler = {
        let (peak, pid) = (peak.clone(), rps.pid());
        tokio::spawn(async move {
            loop {
                if let Some((rss, _)) = homeport_telemetry::usage_of(&pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(devices.len());
    for dev in devices {
        let (gate, client) = (gate.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await;
            let t = Instant::now();
            let r = dev.rpc(&client, "activate --profile bench", None).await;
            let ok = matches!(&r, Ok(o) if o.ok && o.status("CIRAConnection").as_deref() == Some("Configured"));
            let exchanges = r.as_ref().map(|o| o.exchanges).unwrap_or(0);
            let why = match r {
                Ok(o) if !ok => Some(o.message),
                Err(e) => Some(e.to_string()),
                _ => None,
            };
            (ok, t.elapsed(), exchanges, why)
        }));
    }
    let mut ok = 0u64;
    let mut failures = 0u64;
    let mut first_failure = None;
    let mut durations = Vec::new();
    let mut exchanges = 0u64;
    for t in tasks {
        let (good, took, n, why) = t.await?;
        exchanges += u64::from(n);
        if good {
            ok += 1;
            durations.push(took.as_secs_f64());
        } else {
            failures += 1;
            if first_failure.is_none() {
                first_failure = why;
            }
        }
    }
    let elapsed = started.elapsed();
    sampler.abort();
    let (_, cpu1) = homeport_telemetry::usage_of(&rps.pid()).unwrap_or_default();
    let refused = crate::metric_at(health, "homeport_rps_requests_refused_total").await;
    let handshakes_left = crate::metric_at(health, "homeport_rps_handshakes").await;
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    rps.terminate(Duration::from_secs(20)).await;
    durations.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if durations.is_empty() {
            return 0.0;
        }
        let i = ((durations.len() as f64 * p).ceil() as usize).clamp(1, durations.len()) - 1;
        durations[i]
    };
    let in_flight = args.concurrency.min(args.devices as usize).max(1) as u64;
    let line = serde_json::json!({
        "bench": "activate",
        "cpu": crate::cpu::describe(),
        "devices": args.devices,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "mode": if args.acm { "acm" } else { "ccm" },
        "activations": ok,
        "failures": failures,
        "seconds": round(elapsed.as_secs_f64()),
        "activations_per_second": round(ok as f64 / elapsed.as_secs_f64()),
        "p50_seconds": round(pct(0.50)),
        "p99_seconds": round(pct(0.99)),
        "wsman_exchanges_per_activation": round(exchanges as f64 / args.devices.max(1) as f64),
        "rps_cpu_ms_per_activation": round(cpu1.saturating_sub(cpu0).as_secs_f64() * 1000.0 / ok.max(1) as f64),
        "rps_rss_idle_bytes": rss_idle,
        "rps_rss_peak_bytes": peak,
        "rps_rss_bytes_per_activation_in_flight": peak.saturating_sub(rss_idle) / in_flight,
        "first_failure": first_failure,
        "rps_refused": refused,
        "rps_handshake_places_held_after": handshakes_left,
    });
    println!("{line}");
    Ok(())
}
