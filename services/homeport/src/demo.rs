//! The demo's provisioning part: a CIRA configuration and a CCM profile created through the
//! rps admin API, then unprovisioned simulated PCs activated through rps by their own rpc
//! clients; they dial the ingress with the CIRA configuration they received.

use std::net::SocketAddr;
use std::time::Instant;

use homeport_amt_sim::provision::{RpcClient, SimDevice};
use homeport_amt_sim::{Fleet, SimConfig};
use homeport_proto::provisioning::v1 as pb;
use homeport_proto::provisioning::v1::provisioning_admin_client::ProvisioningAdminClient;

use crate::Cli;

/// Seed of the PCs that start unprovisioned (the enrolled fleet uses seed 1).
const SEED: u64 = 2;

pub(crate) async fn activate(
    cli: &Cli,
    secret_file: &std::path::Path,
    ingress: SocketAddr,
    n: u64,
) -> anyhow::Result<Fleet> {
    let secret = homeport_auth::read_hs256_secret(secret_file)?;
    let token = homeport_mps_command::auth::mint_hs256(&secret, "homeport-demo", "demo", 300)?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", cli.rps_grpc_listen))?
            .connect()
            .await?;
    let mut admin =
        ProvisioningAdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
    // Created once per data directory; a second demo run finds them.
    let cira = admin
        .create_cira_config(pb::CiraConfig {
            name: "demo-cira".into(),
            mps_server_address: ingress.ip().to_string(),
            server_address_format: 201,
            mps_port: u32::from(ingress.port()),
            username: "democira".into(),
            auth_method: 2,
            ..Default::default()
        })
        .await;
    if let Some(e) = cira
        .as_ref()
        .err()
        .filter(|e| e.code() != tonic::Code::AlreadyExists)
    {
        anyhow::bail!("creating the CIRA config: {}", e.message());
    }
    let profile = admin
        .create_profile(pb::Profile {
            name: "demo-ccm".into(),
            activation: pb::Activation::Ccm as i32,
            generate_random_password: true,
            cira_config_name: "demo-cira".into(),
            tags: vec!["rps-demo".into()],
            dhcp_enabled: true,
            user_consent: pb::UserConsent::All as i32,
            kvm_enabled: true,
            sol_enabled: true,
            ..Default::default()
        })
        .await;
    if let Some(e) = profile
        .as_ref()
        .err()
        .filter(|e| e.code() != tonic::Code::AlreadyExists)
    {
        anyhow::bail!("creating the profile: {}", e.message());
    }
    let rps = SocketAddr::from(([127, 0, 0, 1], cli.rps_listen.port()));
    let mut client = RpcClient::new(&format!("wss://{rps}/activate"))?;
    client.tenant = "demo".into();
    let started = Instant::now();
    let mut activated = Vec::new();
    for i in 0..n {
        let dev = SimDevice::unprovisioned(SEED, i);
        match dev.rpc(&client, "activate --profile demo-ccm", None).await {
            Ok(r) if r.ok => {
                println!(
                    "  {} activated: {} (CIRA {}; {} WS-Man exchanges)",
                    dev.guid(),
                    r.status("Status").unwrap_or_default(),
                    r.status("CIRAConnection").unwrap_or_default(),
                    r.exchanges
                );
                activated.push(dev);
            }
            Ok(r) => println!("  {} not activated: {}", dev.guid(), r.message),
            Err(e) => println!("  {} not activated: {e}", dev.guid()),
        }
    }
    println!(
        "Activated {}/{n} PCs through rps in {:.2} s; they now dial the ingress by themselves (profile \"demo-ccm\", see `homeportctl profiles list`)",
        activated.len(),
        started.elapsed().as_secs_f64()
    );
    let mut cfg = SimConfig::new(ingress, 0);
    cfg.seed = SEED;
    Ok(Fleet::start_provisioned(cfg, activated)?)
}
