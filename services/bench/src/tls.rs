//! `tls`: the ingress' TLS handshake alone. A server thread runs the ingress' own acceptor
//! (profile `default`, the generated RSA and ECDSA certificates, secret capture and the
//! compact record layer's take-over) against a client thread offering what a simulated device
//! offers, over loopback TCP, and reports the server thread's CPU per handshake. Set beside
//! `cira`'s figure, it shows how much of a device's connect cost is TLS and how much is APF,
//! login and presence.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use homeport_amt_sim::SimTls;
use homeport_cira_ingress::record;
use homeport_cira_ingress::tls::{self, TlsProfile};
use homeport_secrets::{DynSecretStore, LocalFileConfig, LocalFileStore};

#[derive(clap::Args, Debug)]
pub struct TlsArgs {
    /// Handshakes to time (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 5000)]
    handshakes: u32,
    /// TLS offered by the client: modern, modern-pq, static-rsa or static-rsa-cbc.
    #[arg(long, default_value = "modern")]
    tls: String,
}

/// CPU time of the calling thread (10 ms resolution, from /proc).
fn thread_cpu() -> anyhow::Result<Duration> {
    homeport_telemetry::usage_of("thread-self")
        .map(|(_, cpu)| cpu)
        .context("reading /proc/thread-self")
}

pub async fn run(args: TlsArgs) -> anyhow::Result<()> {
    let offer: SimTls = args
        .tls
        .parse()
        .map_err(|e| anyhow::anyhow!("--tls: {e}"))?;
    let rsa_ms = crate::rsa2048_sign_ms()?;
    let dir = std::env::temp_dir().join(format!("homeport-tls{:06x}", fastrand::u32(..0xff_ffff)));
    std::fs::create_dir_all(&dir)?;
    let secrets: DynSecretStore = Arc::new(
        LocalFileStore::open(LocalFileConfig::new(
            dir.join("secrets.enc"),
            dir.join("secrets.key"),
        ))
        .await?,
    );
    let bundle = tls::load_or_generate(&secrets, "localhost", &[]).await;
    let _ = std::fs::remove_dir_all(&dir);
    let acceptor = tls::acceptor(TlsProfile::Default, &bundle?)?;
    let connector = homeport_amt_sim::connector(offer, None)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let warmup = (args.handshakes / 10).max(1);
    let total = warmup + args.handshakes;

    let client = std::thread::spawn(move || -> anyhow::Result<()> {
        for _ in 0..total {
            let tcp = TcpStream::connect(addr)?;
            tcp.set_nodelay(true)?;
            let mut s = connector
                .connect("localhost", tcp)
                .map_err(|e| anyhow::anyhow!("client handshake: {e}"))?;
            // One application byte, so the server's handshake completes before the close.
            s.write_all(&[0])?;
        }
        Ok(())
    });
    let server = std::thread::spawn(move || -> anyhow::Result<(Duration, Duration, u32)> {
        let mut compact = 0;
        let mut started = (Instant::now(), Duration::ZERO);
        for i in 0..total {
            if i == warmup {
                started = (Instant::now(), thread_cpu()?);
            }
            let (tcp, _) = listener.accept()?;
            tcp.set_nodelay(true)?;
            let ssl = record::server_ssl(&acceptor)?;
            let stream = ssl
                .accept(tcp)
                .map_err(|e| anyhow::anyhow!("server handshake: {e}"))?;
            if record::take_over(stream.ssl())?.is_some() {
                compact += 1;
            }
        }
        Ok((
            started.0.elapsed(),
            thread_cpu()?.saturating_sub(started.1),
            compact,
        ))
    });
    let (wall, cpu, compact) = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let n = f64::from(args.handshakes);
    let cpu_ms = cpu.as_secs_f64() * 1000.0 / n;
    println!(
        "{}",
        serde_json::json!({
            "bench": "tls",
            "cpu": crate::cpu::describe(),
            "tls": args.tls,
            "handshakes": args.handshakes,
            "handshakes_per_second": crate::round(n / wall.as_secs_f64()),
            "server_cpu_ms_per_handshake": crate::round(cpu_ms),
            "rsa2048_sign_ms": crate::round(rsa_ms),
            "handshake_cpu_vs_rsa2048": crate::round(cpu_ms / rsa_ms),
            "compact_record_layer": compact >= total - warmup,
        })
    );
    Ok(())
}
