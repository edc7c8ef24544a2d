//! `homeportctl nats-keys`: one NKey per service role for the NATS server Homeport ships
//! (`deploy/nats/nats-server.conf`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use homeport_contracts::access::{nkey_variable, Role};

#[derive(clap::Args, Debug)]
pub struct NatsKeysArgs {
    /// Directory for the seeds (`<role>.nk`, mode 0600, one per service) and
    /// `nats-users.env` (the public keys, for the NATS server's environment).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct NatsConfigArgs {
    /// Subject prefix of the deployment (as HOMEPORT_SUBJECT_PREFIX).
    #[arg(long, default_value = "hp")]
    pub prefix: String,
    /// Print only the `authorization` block (users and permissions), for a server
    /// configuration that includes it (deploy/k8s/base/nats/auth.conf).
    #[arg(long)]
    pub authorization_only: bool,
}

/// Prints the NATS server configuration for a deployment's prefix.
pub fn config(args: &NatsConfigArgs, sink: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let names = homeport_contracts::Names::new(&args.prefix);
    let text = if args.authorization_only {
        homeport_contracts::access::deployment_authorization(&names)
    } else {
        homeport_contracts::access::deployment_config(&names)
    };
    sink.write_all(text.as_bytes())?;
    Ok(())
}

/// Writes `text` to a new file (never over an existing one) with `mode`.
fn write_new(path: &PathBuf, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (remove it first to make new keys)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &NatsKeysArgs, sink: &mut dyn std::io::Write) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut env = String::new();
    for role in Role::ALL {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().context("NKey seed")?;
        write_new(&args.out.join(format!("{}.nk", role.name())), &seed, 0o600)?;
        env.push_str(&format!("{}={}\n", nkey_variable(role), pair.public_key()));
    }
    write_new(&args.out.join("nats-users.env"), &env, 0o644)?;
    writeln!(
        sink,
        "Wrote {} seeds and nats-users.env to {}.\n\
         NATS server: load nats-users.env into its environment and start it with deploy/nats/nats-server.conf.\n\
         Each service: HOMEPORT_NATS_NKEY_FILE=<its role>.nk (ingress, command, audit, bridge, rps); keep the seeds secret.",
        Role::ALL.len(),
        args.out.display()
    )?;
    Ok(())
}
