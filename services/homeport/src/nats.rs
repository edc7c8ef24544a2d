//! The embedded NATS server: started as a child process when no NATS answers, so the
//! all-in-one needs nothing running beforehand.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use homeport_contracts::access::{self, Credential, Role};
use homeport_runtime::CommonArgs;
use homeport_secrets::SecretString;

/// A NATS server this process started; killed when dropped.
pub struct EmbeddedNats {
    child: tokio::process::Child,
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Makes sure `common.nats_url` points at a running NATS with JetStream, starting one when
/// the mode and the situation call for it.
pub async fn ensure(
    common: &mut CommonArgs,
    mode: &str,
    data_dir: &Path,
) -> anyhow::Result<Option<EmbeddedNats>> {
    let reachable = match mode {
        "always" => false,
        _ => homeport_runtime::connect_nats(
            &common.nats_url,
            "homeport-probe",
            Duration::from_secs(1),
        )
        .await
        .is_ok(),
    };
    if reachable {
        return Ok(None);
    }
    if mode == "never" {
        bail!("no NATS at {} and --embedded-nats never", common.nats_url);
    }
    let port = free_port()?;
    let store = data_dir.join("nats");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let conf = data_dir.join("nats.conf");
    write_config(common, &conf, port, &store)?;
    let child = tokio::process::Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server (install it with `apt-get install nats-server`, or pass --nats-url)")?;
    common.nats_url = format!("nats://127.0.0.1:{port}");
    println!(
        "Started an embedded NATS server at {} (data in {}; each service signs in with its own NKey, anonymous clients may only read events)",
        common.nats_url,
        store.display()
    );
    Ok(Some(EmbeddedNats { child }))
}

/// Writes the embedded server's configuration: JetStream, and one NKey user per service role
/// with only its permissions. The keys are new at every start and the seeds stay in this
/// process (`common.nats_auth.role_seeds`): the file holds public keys only.
fn write_config(
    common: &mut CommonArgs,
    path: &Path,
    port: u16,
    store: &Path,
) -> anyhow::Result<()> {
    let names = common.names();
    let mut users = Vec::new();
    let mut seeds = Vec::new();
    for role in Role::ALL {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().context("NKey seed")?;
        users.push((role, Credential::NKey(pair.public_key())));
        seeds.push((role, SecretString::new(seed)));
    }
    let mut observer_password = [0u8; 24];
    openssl::rand::rand_bytes(&mut observer_password)?;
    let observer_password: String = observer_password
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let observer = access::observer_user(&names, "observer", &observer_password);
    let store = store.display().to_string().replace('"', "");
    let text = format!(
        "# Written by homeport at every start of its embedded NATS server.\n\
         listen: \"127.0.0.1:{port}\"\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         no_auth_user: \"observer\"\n{}",
        access::authorization_block(&names, &users, &[observer])
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    common.nats_auth.role_seeds = seeds;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
