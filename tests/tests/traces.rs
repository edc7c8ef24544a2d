//! Traces over OTLP: the services started as processes with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at a receiver inside the test (the OTLP trace service from opentelemetry-proto's
//! generated server, over real gRPC). A power-state call is one trace from mps-command's
//! command span to the ingress node's exchange with the device; a call to a device that is not
//! connected is a failed span; no exported attribute carries a secret.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeport_proto::device::v1 as pb;
use homeport_proto::device::v1::device_service_client::DeviceServiceClient;
use homeport_tests::command::{Bearer, CommandHandle, TEST_JWT_SECRET};
use homeport_tests::procs::{bin, free_port, grpc_channel, wait_ready};
use homeport_tests::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};

const WAIT: Duration = Duration::from_secs(60);

/// The `service.name` a process exported with.
fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

/// Spans received, with the `service.name` of the process that sent them.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = service_name(rs.resource.as_ref());
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Metric points received: service, metric name, value.
#[derive(Clone, Default)]
struct MetricsReceiver(Arc<Mutex<Vec<(String, String, f64)>>>);

#[tonic::async_trait]
impl MetricsService for MetricsReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = self.0.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            let service = service_name(rm.resource.as_ref());
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    // A histogram's point: how many observations it has.
                    if let Some(Data::Histogram(h)) = &m.data {
                        for p in &h.data_points {
                            points.push((service.clone(), m.name.clone(), p.count as f64));
                        }
                        continue;
                    }
                    let values = match &m.data {
                        Some(Data::Sum(s)) => s.data_points.clone(),
                        Some(Data::Gauge(g)) => g.data_points.clone(),
                        _ => Vec::new(),
                    };
                    for p in values {
                        let v = match p.value {
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            None => continue,
                        };
                        points.push((service.clone(), m.name.clone(), v));
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    fn find(&self, service: &str, name: &str, device: &str) -> Option<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(s, span)| {
                s.contains(service) && span.name == name && attr(span, "homeport.device") == device
            })
            .map(|(_, span)| span.clone())
    }

    async fn wait(&self, service: &str, name: &str, device: &str) -> Span {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(span) = self.find(service, name, device) {
                return span;
            }
            assert!(Instant::now() < deadline, "no {name} span from {service}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ok(s: &Span) -> bool {
    s.status
        .as_ref()
        .is_none_or(|st| st.code != StatusCode::Error as i32)
}

fn attr(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_state_call_is_one_trace_from_the_api_to_the_device() {
    let receiver = Receiver::default();
    let otlp = free_port();
    let metrics = MetricsReceiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .add_service(MetricsServiceServer::new(metrics.clone()))
        .serve(format!("127.0.0.1:{otlp}").parse().unwrap());
    tokio::spawn(server);

    let env = TestEnv::new("traces").await;
    homeport_cira_ingress::tls::load_or_generate(&env.secrets, "localhost", &[])
        .await
        .unwrap();
    let jwt = env.dir.join("jwt.key");
    std::fs::write(&jwt, TEST_JWT_SECRET).unwrap();
    let common = [
        ("HOMEPORT_NATS_URL", nats_url()),
        ("HOMEPORT_SUBJECT_PREFIX", env.names.prefix().to_string()),
        ("HOMEPORT_DATABASE_URL", env.database_url().to_string()),
        (
            "HOMEPORT_SECRETS_FILE",
            env.dir.join("secrets.enc").display().to_string(),
        ),
        (
            "HOMEPORT_SECRETS_KEY_FILE",
            env.dir.join("secrets.key").display().to_string(),
        ),
        ("HOMEPORT_LOG", "warn".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_string()),
    ];
    let spawn_logging = |binary: &str, extra: Vec<(&str, String)>, log: std::process::Stdio| {
        tokio::process::Command::new(bin(binary))
            .envs(common.iter().cloned())
            .envs(extra)
            .stdout(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let spawn = |binary: &str, extra| spawn_logging(binary, extra, std::process::Stdio::null());
    let (cira, ingress_health) = (free_port(), free_port());
    let mut ingress = spawn(
        "cira-ingress",
        vec![
            ("HOMEPORT_CIRA_LISTEN", format!("127.0.0.1:{cira}")),
            (
                "HOMEPORT_HEALTH_LISTEN",
                format!("127.0.0.1:{ingress_health}"),
            ),
            ("HOMEPORT_NODE_ID", "traced-node".to_string()),
            (
                "HOMEPORT_MAX_CONNECTIONS_PER_SOURCE_PER_SEC",
                "1000".to_string(),
            ),
        ],
    );
    wait_ready("cira-ingress", ingress_health, &mut ingress).await;
    let (grpc, command_health) = (free_port(), free_port());
    // mps-command logs JSON lines: each line of a command carries its trace and span ids.
    let command_log = env.dir.join("mps-command.log");
    let mut command = spawn_logging(
        "mps-command",
        vec![
            ("HOMEPORT_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
            (
                "HOMEPORT_HEALTH_LISTEN",
                format!("127.0.0.1:{command_health}"),
            ),
            ("HOMEPORT_JWT_HS256_SECRET_FILE", jwt.display().to_string()),
            ("HOMEPORT_LOG_FORMAT", "json".to_string()),
            ("HOMEPORT_LOG", "info".to_string()),
        ],
        std::fs::File::create(&command_log).unwrap().into(),
    );
    wait_ready("mps-command", command_health, &mut command).await;
    let (audit_grpc, audit_health) = (free_port(), free_port());
    let mut audit = spawn(
        "audit",
        vec![
            ("HOMEPORT_GRPC_LISTEN", format!("127.0.0.1:{audit_grpc}")),
            (
                "HOMEPORT_HEALTH_LISTEN",
                format!("127.0.0.1:{audit_health}"),
            ),
            ("HOMEPORT_JWT_HS256_SECRET_FILE", jwt.display().to_string()),
        ],
    );
    wait_ready("audit", audit_health, &mut audit).await;

    let cfg = env
        .enrolled_fleet(format!("127.0.0.1:{cira}").parse().unwrap(), 1, 81, "acme")
        .await;
    let device = cfg.identities().next().unwrap();
    let fleet = env.start_connected(cfg, WAIT).await;
    // Enrolled, never connected.
    let absent_cfg = env
        .enrolled_fleet(format!("127.0.0.1:{cira}").parse().unwrap(), 1, 82, "acme")
        .await;
    let absent = absent_cfg.identities().next().unwrap();

    let channel = grpc_channel(grpc).await;
    let token = CommandHandle::token("acme");
    let mut api = DeviceServiceClient::with_interceptor(channel, Bearer::new(Some(&token)));
    api.get_power_state(pb::DeviceRef {
        guid: device.guid.clone(),
    })
    .await
    .unwrap();
    let failed = api
        .get_power_state(pb::DeviceRef {
            guid: absent.guid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");

    // One trace: the command, its WS-Man exchange, and the node's exchange with the device.
    let command_span = receiver
        .wait("mps-command", "device.command", &device.guid)
        .await;
    let wsman_span = receiver
        .wait("mps-command", "wsman.exchange", &device.guid)
        .await;
    let tunnel_span = receiver
        .wait("cira-ingress", "cira.tunnel", &device.guid)
        .await;
    // Every exchange of the command is its child, and every request the node served for it a
    // child of one of them.
    let of_device = |name: &str| -> Vec<Span> {
        receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, span)| span.name == name && attr(span, "homeport.device") == device.guid)
            .map(|(_, span)| span.clone())
            .collect()
    };
    let exchanges = of_device("wsman.exchange");
    let exchange_ids: Vec<_> = exchanges.iter().map(|s| s.span_id.clone()).collect();
    for e in &exchanges {
        assert_eq!(
            (&e.trace_id, &e.parent_span_id),
            (&command_span.trace_id, &command_span.span_id),
            "the exchange is the command's child"
        );
    }
    for t in of_device("cira.tunnel") {
        assert_eq!(t.trace_id, command_span.trace_id, "one trace");
        assert!(
            exchange_ids.contains(&t.parent_span_id),
            "the node continues an exchange"
        );
    }
    assert_eq!(attr(&command_span, "homeport.action"), "GetPowerState");
    assert_eq!(attr(&tunnel_span, "homeport.node"), "traced-node");
    // Power state: enumerating CIM_ServiceAvailableToElement.
    assert!(
        attr(&wsman_span, "wsman.action")
            .starts_with("http://schemas.xmlsoap.org/ws/2004/09/enumeration/"),
        "{:?}",
        wsman_span.attributes
    );
    assert!(attr(&wsman_span, "wsman.resource").ends_with("CIM_ServiceAvailableToElement"));
    assert!(ok(&command_span) && ok(&tunnel_span) && ok(&wsman_span));
    // The command's event stored by the audit worker, in the same trace.
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let found = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(s, span)| {
                s.contains("audit")
                    && span.name == "audit.store"
                    && attr(span, "homeport.device") == device.guid
                    && span.parent_span_id == command_span.span_id
            })
            .map(|(_, span)| span.clone());
        if let Some(span) = found {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "no audit.store span in the command's trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored.trace_id, command_span.trace_id);
    assert_eq!(attr(&stored, "homeport.event.kind"), "GetPowerState");
    // The device's login, and the audit worker storing the events.
    let login = receiver
        .wait("cira-ingress", "cira.login", &device.guid)
        .await;
    assert!(ok(&login), "{login:?}");
    let deadline = Instant::now() + WAIT;
    while !receiver
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(s, span)| s.contains("audit") && span.name == "audit.batch")
    {
        assert!(Instant::now() < deadline, "no audit.batch span");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The call to a device that is not connected fails, and its span says so.
    let failed_span = receiver
        .wait("mps-command", "device.command", &absent.guid)
        .await;
    let status = failed_span.status.clone().unwrap_or_default();
    assert_eq!(status.code, StatusCode::Error as i32, "{status:?}");

    // The failed command's log line names the same trace and span.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let text = std::fs::read_to_string(&command_log).unwrap();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "command failed" && v["device"] == absent.guid.as_str());
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no log line of the failed command"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        line["span"]["trace_id"],
        hex(&failed_span.trace_id),
        "{line}"
    );
    assert_eq!(line["span"]["span_id"], hex(&failed_span.span_id), "{line}");

    // Metrics over OTLP are the same instruments /metrics renders.
    let deadline = Instant::now() + WAIT;
    loop {
        let points = metrics.0.lock().unwrap().clone();
        let has = |service: &str, name: &str, min: f64| {
            points
                .iter()
                .any(|(s, n, v)| s.contains(service) && n == name && *v >= min)
        };
        if has("cira-ingress", "homeport_cira_devices_connected", 1.0)
            && has("cira-ingress", "homeport_cira_tls_handshakes_total", 1.0)
            && has("mps-command", "homeport_commands_total", 2.0)
            // Named after the semantic conventions where one exists.
            && has("mps-command", "rpc.server.call.duration", 2.0)
            && has("cira-ingress", "messaging.client.sent.messages", 1.0)
            && has("audit", "db.client.operation.duration", 1.0)
            && has("audit", "homeport_audit_events_stored_total", 1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OTLP metrics missing: {:?}",
            points
                .iter()
                .map(|p| &p.1)
                .collect::<std::collections::BTreeSet<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The registry's and the audit service's calls are spans too, continuing the caller's
    // traceparent.
    let caller_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    fn with_trace<T>(mut r: tonic::Request<T>, traceparent: &str) -> tonic::Request<T> {
        r.metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        r
    }
    let registry_channel = grpc_channel(grpc).await;
    let mut registry =
        homeport_proto::device::v1::device_registry_client::DeviceRegistryClient::with_interceptor(
            registry_channel,
            Bearer::new(Some(&token)),
        );
    registry
        .list_devices(with_trace(
            tonic::Request::new(pb::ListDevicesRequest::default()),
            caller_trace,
        ))
        .await
        .unwrap();
    let audit_channel = grpc_channel(audit_grpc).await;
    let mut audit_api =
        homeport_proto::audit::v1::audit_service_client::AuditServiceClient::with_interceptor(
            audit_channel,
            Bearer::new(Some(&token)),
        );
    audit_api
        .query_events(with_trace(
            tonic::Request::new(homeport_proto::audit::v1::QueryEventsRequest {
                page_size: 10,
                ..Default::default()
            }),
            caller_trace,
        ))
        .await
        .unwrap();
    for (service, name) in [
        ("mps-command", "DeviceRegistry/ListDevices"),
        ("audit", "AuditService/QueryEvents"),
    ] {
        let deadline = Instant::now() + WAIT;
        let span = loop {
            let found = receiver
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(s, span)| s.contains(service) && span.name == name)
                .map(|(_, span)| span.clone());
            if let Some(span) = found {
                break span;
            }
            assert!(Instant::now() < deadline, "no {name} span");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            hex(&span.trace_id),
            "0af7651916cd43dd8448eb211c80319c",
            "{name}"
        );
        assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331", "{name}");
    }

    // A provisioning flow is a span of rps; its events carry the span's trace and span ids.
    let (rps_port, rps_grpc, rps_health) = (free_port(), free_port(), free_port());
    let mut rps = spawn(
        "rps",
        vec![
            ("HOMEPORT_RPS_LISTEN", format!("127.0.0.1:{rps_port}")),
            ("HOMEPORT_GRPC_LISTEN", format!("127.0.0.1:{rps_grpc}")),
            ("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{rps_health}")),
            ("HOMEPORT_JWT_HS256_SECRET_FILE", jwt.display().to_string()),
        ],
    );
    wait_ready("rps", rps_health, &mut rps).await;
    let mut admin = homeport_tests::rps::admin_client(rps_grpc, "acme").await;
    homeport_tests::rps::ccm_profile_with_cira(
        &mut admin,
        "ccm",
        format!("127.0.0.1:{cira}").parse().unwrap(),
    )
    .await;
    let pc = homeport_amt_sim::provision::SimDevice::unprovisioned(83, 0);
    let mut rpc =
        homeport_amt_sim::provision::RpcClient::new(&format!("wss://127.0.0.1:{rps_port}/x"))
            .unwrap();
    rpc.tenant = "acme".into();
    let done = pc.rpc(&rpc, "activate --profile ccm", None).await.unwrap();
    assert!(done.ok, "{done:?}");
    let flow = receiver.wait("rps", "rps.flow", pc.guid()).await;
    assert!(ok(&flow));
    assert_eq!(attr(&flow, "homeport.flow"), "activate");
    let activated = env.wait_events("activated", 1, WAIT).await;
    let (_, event) = activated
        .iter()
        .find(|(_, e)| e.device_guid == pc.guid())
        .unwrap();
    assert_eq!(event.trace_id, hex(&flow.trace_id));
    assert_eq!(event.span_id, hex(&flow.span_id));
    let amt_now = homeport_secrets::DeviceSecrets::load(env.secrets.as_ref(), pc.guid())
        .await
        .unwrap()
        .and_then(|s| s.amt_password)
        .unwrap()
        .expose()
        .to_string();

    // Nothing secret in any exported attribute.
    let secrets = [
        amt_now.clone(),
        device.mps_password.expose().to_string(),
        device.amt_password.expose().to_string(),
        absent.amt_password.expose().to_string(),
        token.clone(),
        String::from_utf8_lossy(TEST_JWT_SECRET).to_string(),
    ];
    let spans = receiver.0.lock().unwrap().clone();
    assert!(spans.len() >= 3);
    for (_, span) in &spans {
        for a in &span.attributes {
            let text = format!("{:?}", a.value);
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} carries a secret",
                    a.key
                );
            }
        }
    }

    fleet.stop().await;
    let _ = ingress.start_kill();
    let _ = command.start_kill();
    let _ = audit.start_kill();
    let _ = rps.start_kill();
    env.cleanup().await;
}
