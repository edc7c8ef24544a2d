//! Starting an ingress from configuration, for the binaries that run one (`cira-ingress`,
//! the all-in-one `homeport`): secrets, certificates, database, NATS, listeners, health.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use homeport_runtime::CommonArgs;
use homeport_secrets::DynSecretStore;
use homeport_store::Store;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{auth, tls, Ingress, IngressConfig, IngressParts};

/// A running ingress with the parts it was built from.
pub struct Served {
    pub ingress: Ingress,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub nats: async_nats::Client,
    stop_health: CancellationToken,
}

impl Served {
    /// Drains the ingress, then stops the health endpoint.
    pub async fn shutdown(self) {
        self.ingress.shutdown().await;
        self.stop_health.cancel();
    }
}

/// Connects every dependency and starts the ingress and its health endpoint.
pub async fn serve(
    common: &CommonArgs,
    config: &IngressConfig,
    node_id: String,
) -> anyhow::Result<Served> {
    let secrets = common.open_secrets().await?;
    let bundle = config.certificates(&secrets).await?;
    let acceptor = tls::acceptor(config.tls_profile, &bundle)?;
    // Batched login lookups use one connection at a time, plus one being checked after use.
    let store = common.open_store_keeping(auth::LOOKUP_CONNECTIONS).await?;
    let nats = common
        .connect_nats(
            homeport_contracts::access::Role::Ingress,
            &format!("cira-ingress/{node_id}"),
            Duration::from_secs(30),
        )
        .await?;
    let listener = bind_cira(config.listen, config.reuse_port)
        .with_context(|| format!("binding CIRA port {}", config.listen))?;
    let health = homeport_runtime::bind(config.health_listen, "health port").await?;
    let ingress = Ingress::start(
        IngressParts {
            config: config.clone(),
            node_id,
            names: common.names(),
            nats: nats.clone(),
            store: store.clone(),
            secrets: secrets.clone(),
            tls: acceptor,
            stream_limits: common.stream_limits(),
        },
        listener,
    )
    .await?;
    let stop_health = CancellationToken::new();
    tokio::spawn(homeport_telemetry::serve_health(
        health,
        ingress.observable(),
        stop_health.clone(),
    ));
    Ok(Served {
        ingress,
        store,
        secrets,
        nats,
        stop_health,
    })
}

/// Binds the CIRA listener; with `reuse_port`, other processes may bind the same port.
pub fn bind_cira(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    defer_accept(&socket, DEFER_ACCEPT_SECS)?;
    socket.listen(1024)
}

/// How long the kernel holds a connection that has sent nothing before handing it over anyway
/// (then the TLS handshake timeout applies).
const DEFER_ACCEPT_SECS: libc::c_int = 10;

/// `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` only once its first bytes (a
/// device's ClientHello) have arrived, so a device costs one wake-up less, and connections that
/// never speak stay in the kernel's SYN queue instead of taking a file descriptor and a task.
fn defer_accept(socket: &TcpSocket, secs: libc::c_int) -> std::io::Result<()> {
    homeport_runtime::io::set_tcp_option(socket, homeport_runtime::io::TCP_DEFER_ACCEPT, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_reuse_port_lets_processes_share_the_cira_port() {
        let first = bind_cira("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_cira(addr, true).expect("shared with --reuse-port");
        assert_eq!(second.local_addr().unwrap(), addr);
        assert!(bind_cira(addr, false).is_err(), "taken without it");
        let alone = bind_cira("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(bind_cira(alone.local_addr().unwrap(), true).is_err());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connection_is_accepted_once_it_speaks() {
        use tokio::io::AsyncWriteExt as _;
        let listener = bind_cira("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut speaker = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Both TCP handshakes are complete; only the one with data is handed over.
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(
            early.is_err(),
            "a connection that sent nothing was accepted"
        );
        speaker.write_all(b"\x16\x03\x01").await.unwrap();
        let (_, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("accepted after its first bytes")
            .unwrap();
        assert_eq!(peer, speaker.local_addr().unwrap());
        assert_ne!(peer, silent.local_addr().unwrap());
    }
}
