//! The gRPC connection: one channel, both service clients, the bearer token and the deadline.

use std::time::Duration;

use homeport_proto::device::v1::device_registry_client::DeviceRegistryClient;
use homeport_proto::device::v1::device_service_client::DeviceServiceClient;
use homeport_proto::provisioning::v1::provisioning_admin_client::ProvisioningAdminClient;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::error::{one_line, CliError};
use crate::output::Output;
use crate::secret::Secret;

type Svc = InterceptedService<Channel, Auth>;

/// What every command gets: the clients and where to print.
pub struct Api {
    pub registry: DeviceRegistryClient<Svc>,
    pub device: DeviceServiceClient<Svc>,
    /// The provisioning admin API (when connected to rps).
    pub provisioning: ProvisioningAdminClient<Svc>,
    pub out: Output,
}

/// Adds `authorization: Bearer <token>` and the time left until the command's deadline
/// (`grpc-timeout`, so the server stops working on a call the client has given up on).
#[derive(Clone)]
pub struct Auth {
    bearer: Option<MetadataValue<Ascii>>,
    deadline: Instant,
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        // Rounded up to a whole millisecond (the header's coarsest unit we use), so the
        // server's deadline is never before ours; see the CANCELLED case in `main`.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        request.set_timeout(Duration::from_millis(millis.saturating_add(1)));
        Ok(request)
    }
}

/// Connects now rather than on the first call, so an unreachable endpoint is reported as
/// such (with its address) instead of as the first call's UNAVAILABLE.
pub async fn connect(
    endpoint: &str,
    token: Option<&Secret>,
    deadline: Instant,
    out: Output,
) -> Result<Api, CliError> {
    let bearer = match token.map(Secret::expose).filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => {
            let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                CliError::Usage("the token contains characters not allowed in a header".into())
            })?;
            // Kept out of HTTP/2 header compression tables.
            value.set_sensitive(true);
            Some(value)
        }
    };
    let timeout = deadline.saturating_duration_since(Instant::now());
    let channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|_| CliError::Usage(format!("--endpoint {endpoint:?} is not a valid URI")))?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| CliError::Connect {
            endpoint: endpoint.to_string(),
            reason: connect_reason(&e),
        })?;
    let auth = Auth { bearer, deadline };
    Ok(Api {
        registry: DeviceRegistryClient::with_interceptor(channel.clone(), auth.clone()),
        device: DeviceServiceClient::with_interceptor(channel.clone(), auth.clone()),
        provisioning: ProvisioningAdminClient::with_interceptor(channel, auth),
        out,
    })
}

/// "connection refused" when that is what happened (the common case: nothing listens, or
/// wrong port); otherwise the error's whole chain, which tonic's top-level text omits.
fn connect_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let chain = std::iter::successors(Some(e), |e| e.source());
    let mut messages = Vec::new();
    for cause in chain {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        messages.push(cause.to_string());
    }
    one_line(messages.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_names_the_endpoint() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let out = Output::new(crate::output::Format::Human, Box::new(std::io::sink()));
        let Err(e) = connect(&endpoint, None, deadline, out).await else {
            panic!("connected to a closed port");
        };
        assert_eq!(
            e.line(),
            format!("UNAVAILABLE: cannot connect to {endpoint}: connection refused")
        );
    }

    #[test]
    fn interceptor_adds_bearer_and_deadline() {
        let mut auth = Auth {
            bearer: Some(MetadataValue::from_static("Bearer abc")),
            deadline: Instant::now() + Duration::from_secs(30),
        };
        let request = auth.call(Request::new(())).unwrap();
        let md = request.metadata();
        assert_eq!(md.get("authorization").unwrap(), "Bearer abc");
        assert!(md.get("grpc-timeout").is_some());
    }
}
