//! mps-command in the harness: a service on a loopback port and gRPC clients with tokens.

use std::net::SocketAddr;
use std::time::Duration;

use homeport_mps_command::{auth, Authenticator, CommandConfig, CommandParts, Key, MpsCommand};
use homeport_proto::device::v1::device_registry_client::DeviceRegistryClient;
use homeport_proto::device::v1::device_service_client::DeviceServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::TestEnv;

/// The HS256 secret test services trust.
pub const TEST_JWT_SECRET: &[u8] = b"homeport-test-secret-0123456789abcdef";

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Bearer {
        Bearer(token.map(|t| format!("Bearer {t}").parse().expect("metadata")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Devices = DeviceServiceClient<InterceptedService<Channel, Bearer>>;
pub type Registry = DeviceRegistryClient<InterceptedService<Channel, Bearer>>;

/// A running mps-command.
pub struct CommandHandle {
    pub addr: SocketAddr,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl CommandHandle {
    /// A token for `tenant` signed with [`TEST_JWT_SECRET`].
    pub fn token(tenant: &str) -> String {
        auth::mint_hs256(TEST_JWT_SECRET, "tester", tenant, 600).expect("token")
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("gRPC connect")
    }

    fn bearer(token: Option<&str>) -> Bearer {
        Bearer::new(token)
    }

    /// DeviceService client for `tenant`.
    pub async fn devices(&self, tenant: &str) -> Devices {
        self.devices_with(Some(&Self::token(tenant))).await
    }

    pub async fn devices_with(&self, token: Option<&str>) -> Devices {
        DeviceServiceClient::with_interceptor(self.channel().await, Self::bearer(token))
    }

    pub async fn registry(&self, tenant: &str) -> Registry {
        DeviceRegistryClient::with_interceptor(
            self.channel().await,
            Self::bearer(Some(&Self::token(tenant))),
        )
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.served).await;
    }
}

/// Settings for fast tests.
pub fn command_config(exchange_timeout: Duration) -> CommandConfig {
    CommandConfig {
        grpc_listen: "127.0.0.1:0".parse().expect("addr"),
        health_listen: "127.0.0.1:0".parse().expect("addr"),
        exchange_timeout_ms: u64::try_from(exchange_timeout.as_millis()).unwrap_or(u64::MAX),
        jwt: homeport_auth::JwtArgs::default(),
        command_timeout_ms: 60_000,
        bulk_concurrency: 16,
    }
}

impl TestEnv {
    /// Starts mps-command for this test's deployment on a loopback port.
    pub async fn start_command(&self, config: CommandConfig) -> CommandHandle {
        let service = MpsCommand::start(CommandParts {
            config,
            instance: "test".into(),
            names: self.names.clone(),
            nats: self.nats_as(homeport_contracts::access::Role::Command),
            store: self.store.clone(),
            secrets: self.secrets.clone(),
            auth: Authenticator::new(vec![Key::Hs256(TEST_JWT_SECRET.to_vec())], "tenant"),
            stream_limits: crate::test_stream_limits(),
        })
        .await
        .expect("mps-command starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        let served = tokio::spawn(async move {
            let _ = service.serve(listener, s.cancelled_owned()).await;
            service.shutdown().await;
        });
        CommandHandle { addr, stop, served }
    }
}

/// A deployment with one ingress node ("node-a"), a connected simulated fleet of one tenant,
/// and mps-command with a 5 s exchange deadline.
pub struct CommandSetup {
    pub env: TestEnv,
    pub ingress: homeport_cira_ingress::Ingress,
    pub fleet: homeport_amt_sim::Fleet,
    pub cmd: CommandHandle,
}

impl CommandSetup {
    pub async fn start(
        label: &str,
        devices: u64,
        seed: u64,
        tenant: &str,
        tweak: impl FnOnce(&mut homeport_amt_sim::SimConfig),
    ) -> CommandSetup {
        let env = TestEnv::new(label).await;
        let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
        let mut cfg = env
            .enrolled_fleet(ingress.local_addr(), devices, seed, tenant)
            .await;
        tweak(&mut cfg);
        let fleet = env.start_connected(cfg, Duration::from_secs(30)).await;
        let cmd = env
            .start_command(command_config(Duration::from_secs(5)))
            .await;
        CommandSetup {
            env,
            ingress,
            fleet,
            cmd,
        }
    }

    pub fn guid(&self, i: usize) -> String {
        self.fleet.identities()[i].guid.clone()
    }

    pub async fn stop(self) {
        self.cmd.stop().await;
        self.fleet.stop().await;
        self.env.cleanup().await;
    }
}
