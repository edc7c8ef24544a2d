//! rps in the test process, and clients of its admin API.

use std::net::SocketAddr;
use std::time::Duration;

use homeport_auth::{Authenticator, Key};
use homeport_proto::provisioning::v1 as pb;
use homeport_proto::provisioning::v1::provisioning_admin_client::ProvisioningAdminClient;
use homeport_rps::{Rps, RpsConfig, RpsParts};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::command::{Bearer, CommandHandle, TEST_JWT_SECRET};
use crate::TestEnv;

pub type Admin = ProvisioningAdminClient<InterceptedService<Channel, Bearer>>;

/// Settings for tests: the reference's limits, short deadlines.
pub fn rps_config() -> RpsConfig {
    RpsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls_cert_file: None,
        tls_key_file: None,
        grpc_listen: "127.0.0.1:0".parse().expect("addr"),
        health_listen: "127.0.0.1:0".parse().expect("addr"),
        jwt: homeport_auth::JwtArgs::default(),
        step_timeout_secs: 10,
        flow_timeout_secs: 60,
        handshake_timeout_secs: 5,
        max_message_bytes: 102_400,
        max_flows: 1000,
        max_handshakes: 1024,
        max_handshakes_per_source: 64,
        setup_settle_ms: 0,
    }
}

pub struct RpsHandle {
    /// The rpc clients' WebSocket listener.
    pub clients: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl RpsHandle {
    /// `wss://` URL of the listener, as rpc-go's `-u`.
    pub fn url(&self) -> String {
        format!("wss://{}/activate", self.clients)
    }

    pub async fn admin(&self, tenant: &str) -> Admin {
        admin_client(self.admin_addr.port(), tenant).await
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.served).await;
    }
}

/// An admin client for `tenant` on a loopback port.
pub async fn admin_client(port: u16, tenant: &str) -> Admin {
    let channel = crate::procs::grpc_channel(port).await;
    ProvisioningAdminClient::with_interceptor(
        channel,
        Bearer::new(Some(&CommandHandle::token(tenant))),
    )
}

impl TestEnv {
    pub async fn start_rps(&self, config: RpsConfig) -> RpsHandle {
        self.start_rps_with(config, self.store.clone()).await
    }

    /// rps on its own store (one reached through a proxy, say).
    pub async fn start_rps_with(
        &self,
        config: RpsConfig,
        store: homeport_store::Store,
    ) -> RpsHandle {
        let service = Rps::start(RpsParts {
            config,
            instance: "test".into(),
            names: self.names.clone(),
            nats: self.nats_as(homeport_contracts::access::Role::Rps),
            store,
            secrets: self.secrets.clone(),
            auth: Authenticator::new(vec![Key::Hs256(TEST_JWT_SECRET.to_vec())], "tenant"),
            stream_limits: crate::test_stream_limits(),
        })
        .await
        .expect("rps starts");
        let clients = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (clients_addr, admin_addr) = (
            clients.local_addr().expect("addr"),
            grpc.local_addr().expect("addr"),
        );
        service.serve_clients(clients);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let served = tokio::spawn(async move {
            let _ = service.serve_admin(grpc, s.cancelled_owned()).await;
            service.shutdown(Duration::from_secs(5)).await;
        });
        RpsHandle {
            clients: clients_addr,
            admin_addr,
            stop,
            served,
        }
    }
}

/// A CIRA configuration pointing at `ingress` (the root taken from the ingress's stored
/// certificates) and a CCM profile using it, in the admin's tenant.
pub async fn ccm_profile_with_cira(admin: &mut Admin, profile: &str, ingress: SocketAddr) {
    admin
        .create_cira_config(pb::CiraConfig {
            name: format!("{profile}-cira"),
            mps_server_address: ingress.ip().to_string(),
            server_address_format: 201,
            mps_port: u32::from(ingress.port()),
            username: "homeport1".into(),
            auth_method: 2,
            ..Default::default()
        })
        .await
        .expect("CIRA config created");
    admin
        .create_profile(pb::Profile {
            name: profile.into(),
            activation: pb::Activation::Ccm as i32,
            generate_random_password: true,
            cira_config_name: format!("{profile}-cira"),
            tags: vec!["provisioned".into()],
            dhcp_enabled: true,
            user_consent: pb::UserConsent::All as i32,
            kvm_enabled: true,
            sol_enabled: true,
            ..Default::default()
        })
        .await
        .expect("profile created");
}
