//! The embedded NATS server: started as a child process when no NATS answers, so the
//! all-in-one needs nothing running beforehand.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use homeport_runtime::CommonArgs;

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
    let child = tokio::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server (install it with `apt-get install nats-server`, or pass --nats-url)")?;
    common.nats_url = format!("nats://127.0.0.1:{port}");
    println!(
        "Started an embedded NATS server at {} (data in {})",
        common.nats_url,
        store.display()
    );
    Ok(Some(EmbeddedNats { child }))
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
