//! One rpc client's connection: TLS, the WebSocket upgrade, the first message (command and
//! device facts), the checks before any WS-Man, then the flow driven step by step, each
//! step with its deadline and the whole flow with another. The flow decides; this only
//! moves bytes and runs effects against the stores.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt as _, StreamExt as _};
use homeport_contracts::events::envelope;
use homeport_proto::events::v1 as ev;
use homeport_secrets::{device_path, DeviceSecrets, SecretString};
use homeport_store::{DeviceInfo, NewDevice, StoreError};
use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio_openssl::SslStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::flow::activation::{
    AcmPlan, Activation, CiraPlan, Features, NetworkPlan, Plan, WifiPlan, WifiProfile,
};
use crate::flow::deactivation::Deactivation;
use crate::flow::maintenance::{IpConfig, Job, Maintenance};
use crate::flow::{mode_name, Effect, Finish, Flow, Output};
use crate::protocol::{check_request, Command, DeviceFacts, Envelope, StatusMessage, Task};
use crate::specs::{self, CiraSpec, ProfileSpec};
use crate::Inner;

type Ws<S> = WebSocketStream<S>;

/// Tries of an effect whose store is unavailable, and the pause between them (all within the
/// step's deadline).
const EFFECT_ATTEMPTS: u32 = 3;
const EFFECT_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 8 * 1024;

/// What the effects and the event need to know about the device and the request.
struct Ctx {
    guid: String,
    tenant: String,
    profile: String,
    flow: &'static str,
    hostname: String,
    fqdn: String,
    friendly_name: Option<String>,
    tags: Vec<String>,
    info: DeviceInfo,
    peer: SocketAddr,
    started: Instant,
    /// The device had a registry row before this flow.
    registered: bool,
    /// The flow's W3C traceparent, when its span is exported.
    traceparent: Option<String>,
}

/// Serves one TCP connection to its end. Never panics on input; every wait is bounded.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    acceptor: Arc<SslAcceptor>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let handshake_deadline = tokio::time::Instant::now() + inner.config.handshake_timeout();
    // Until its first message a connection holds a handshake place, from a global and a
    // per-source budget; without one it is closed at once, before any TLS work.
    let Some(place) = inner.handshakes.enter(peer.ip()) else {
        inner.metrics.refused.inc();
        tracing::debug!(%peer, "too many connections in their handshake; closed");
        return;
    };
    let _ = tcp.set_nodelay(true);
    let tls = match timeout_at(handshake_deadline, tls_accept(&acceptor, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // Small buffers: a flow exchanges messages of a few KB one at a time, and the library's
    // 128 KiB defaults would be most of a connection's memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(inner.config.max_message_bytes))
        .max_frame_size(Some(inner.config.max_message_bytes));
    let ws = match timeout_at(
        handshake_deadline,
        tokio_tungstenite::accept_async_with_config(tls, Some(config)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => {
            tracing::debug!(%peer, "WebSocket upgrade failed or timed out");
            return;
        }
    };
    inner.metrics.in_flight.inc();
    run(&inner, ws, peer, handshake_deadline, place).await;
    inner.metrics.in_flight.dec();
}

async fn tls_accept(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
) -> anyhow::Result<SslStream<TcpStream>> {
    let ssl = Ssl::new(acceptor.context())?;
    let mut s = SslStream::new(ssl, tcp)?;
    Pin::new(&mut s).accept().await?;
    Ok(s)
}

/// Why reading the client's next message failed.
enum ReadError {
    Closed,
    Timeout,
    Protocol(String),
}

/// The next text message within the deadline (pings are answered by the library; binary
/// frames end the connection, as in the reference).
async fn next_envelope<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    deadline: tokio::time::Instant,
) -> Result<Envelope, ReadError> {
    loop {
        let msg = match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(None) => return Err(ReadError::Closed),
            Ok(Some(Err(e))) => return Err(ReadError::Protocol(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                return serde_json::from_str::<Envelope>(t.as_str())
                    .map_err(|_| ReadError::Protocol("message is not a JSON envelope".into()))
            }
            Message::Binary(_) => {
                return Err(ReadError::Protocol(
                    "binary frames are not part of the protocol".into(),
                ))
            }
            Message::Close(_) => return Err(ReadError::Closed),
            _ => {}
        }
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    env: &Envelope,
    deadline: tokio::time::Instant,
) -> bool {
    matches!(
        timeout_at(deadline, ws.send(Message::text(env.to_json()))).await,
        Ok(Ok(()))
    )
}

/// Refuses with the reference's plain-text error and closes.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    text: &str,
    step: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + step;
    if send(ws, &Envelope::error_text(text), deadline).await {
        close(ws, deadline).await;
    }
}

/// The closing handshake: our Close, then whatever the client still sends until its Close
/// (bounded by `deadline`). Dropping the socket with unread bytes would make the kernel
/// reset the connection, and a reset can destroy the answer before the client reads it.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, deadline: tokio::time::Instant) {
    if timeout_at(deadline, ws.close(None)).await.is_err() {
        return;
    }
    while let Ok(Some(Ok(_))) = timeout_at(deadline, ws.next()).await {}
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    mut ws: Ws<S>,
    peer: SocketAddr,
    handshake_deadline: tokio::time::Instant,
    place: crate::limits::Place,
) {
    let step = inner.config.step_timeout();
    let first = match next_envelope(&mut ws, handshake_deadline).await {
        Ok(e) => e,
        Err(ReadError::Protocol(why)) => {
            inner.metrics.refused.inc();
            refuse(&mut ws, &why, step).await;
            return;
        }
        Err(_) => return,
    };
    let (command, facts) = match check_request(&first) {
        Ok(r) => r,
        Err(e) => {
            inner.metrics.refused.inc();
            refuse(&mut ws, &e.to_string(), step).await;
            return;
        }
    };
    let tenant = first.tenant_id.clone();
    // A valid request: it leaves the handshake budget and waits (bounded) for a flow slot.
    drop(place);
    let _slot = match timeout_at(handshake_deadline, inner.slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            inner.metrics.refused.inc();
            tracing::warn!(%peer, "no flow slot in time; request refused");
            refuse(
                &mut ws,
                "Homeport is busy provisioning other devices; try again",
                inner.config.step_timeout(),
            )
            .await;
            return;
        }
    };
    let flow_deadline = tokio::time::Instant::now() + inner.config.flow_timeout();
    let mut ctx = Ctx {
        guid: facts.guid.clone(),
        tenant,
        profile: match &command {
            Command::Activate { profile } => profile.clone(),
            _ => String::new(),
        },
        flow: command.flow(),
        hostname: facts.payload.hostname.clone(),
        fqdn: facts.payload.fqdn.clone(),
        friendly_name: facts.payload.friendly_name.clone(),
        tags: Vec::new(),
        info: DeviceInfo {
            fw_version: Some(facts.payload.ver.clone()),
            fw_build: Some(facts.payload.build.clone()),
            fw_sku: Some(facts.payload.sku.clone()).filter(|s| !s.is_empty()),
            current_mode: None,
            features: Some(facts.payload.features.trim().to_string()).filter(|s| !s.is_empty()),
            ip_address: Some(peer.ip().to_string()),
            extra: Default::default(),
        },
        peer,
        started: Instant::now(),
        registered: false,
        traceparent: None,
    };
    let prepared = match timeout_at(
        tokio::time::Instant::now() + step,
        prepare(inner, &mut ctx, &command, facts),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Refusal::Other(
            "the database or secret store did not answer in time".into(),
        )),
    };
    let mut flow: Box<dyn Flow> = match prepared {
        Ok(f) => f,
        Err(refusal) => {
            let text = refusal.text();
            inner.metrics.refused.inc();
            let finish = Finish::failed(StatusMessage::status(text.clone()), "pre-provisioning");
            publish(inner, &ctx, &finish, 0);
            refuse(&mut ws, &text, step).await;
            return;
        }
    };
    inner.metrics.flows.inc();
    // One span per flow (exported when OTLP is configured); its ids go into the flow's log
    // lines and its events, so the audit trail joins the trace.
    let span = homeport_telemetry::traces::TraceSpan::start(
        "rps.flow",
        true,
        None,
        vec![
            ("homeport.flow", ctx.flow.to_string()),
            ("homeport.device", ctx.guid.clone()),
            ("homeport.tenant", ctx.tenant.clone()),
            ("homeport.profile", ctx.profile.clone()),
        ],
    );
    ctx.traceparent = span.traceparent().map(str::to_string);
    let finish = tracing::Instrument::instrument(
        drive(inner, &mut ws, &mut ctx, flow.as_mut(), flow_deadline),
        span.log_span("rps.flow"),
    )
    .await;
    span.end((!finish.ok).then_some(finish.outcome));
    let exchanges = flow.exchanges();
    inner.metrics.exchanges.add(u64::from(exchanges));
    if finish.ok {
        inner.metrics.succeeded.inc();
    } else {
        inner.metrics.failed.inc();
    }
    inner.metrics.duration.observe(ctx.started.elapsed());
    tracing::info!(
        device = %ctx.guid,
        tenant = %ctx.tenant,
        flow = ctx.flow,
        outcome = finish.outcome,
        exchanges,
        ms = ctx.started.elapsed().as_millis() as u64,
        "provisioning flow ended"
    );
    publish(inner, &ctx, &finish, exchanges);
    let deadline = tokio::time::Instant::now() + step;
    if send(
        &mut ws,
        &Envelope::result(finish.ok, &finish.status),
        deadline,
    )
    .await
    {
        close(&mut ws, deadline).await;
    }
}

/// Runs the flow to its end: the client's answers within the step deadline, the whole flow
/// within its own.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    ws: &mut Ws<S>,
    ctx: &mut Ctx,
    flow: &mut dyn Flow,
    flow_deadline: tokio::time::Instant,
) -> Finish {
    let step = inner.config.step_timeout();
    let mut out = flow.start();
    loop {
        let step_deadline = (tokio::time::Instant::now() + step).min(flow_deadline);
        out = match out {
            Output::Done(f) => return f,
            Output::Send(http) => {
                if !send(ws, &Envelope::wsman(&http), step_deadline).await {
                    return flow.abandon("the client stopped reading");
                }
                loop {
                    match next_envelope(ws, step_deadline).await {
                        Ok(e) if e.method == "response" => match e.payload_bytes() {
                            Ok(bytes) => break flow.on_reply(&bytes),
                            Err(err) => return flow.abandon(&err.to_string()),
                        },
                        // rpc-go echoes heartbeats; they carry nothing for the flow.
                        Ok(e) if e.method == "heartbeat_response" => continue,
                        // Not echoed: a client's text does not go into results and events.
                        Ok(_) => {
                            return flow
                                .abandon("the client sent something else than the device's answer")
                        }
                        Err(ReadError::Timeout) if tokio::time::Instant::now() >= flow_deadline => {
                            return flow.abandon("the whole flow took longer than its deadline")
                        }
                        // rpc-go sends nothing when the firmware said nothing within its
                        // own read deadline: the flow decides (check, send again or give up).
                        Err(ReadError::Timeout) => break flow.on_timeout(),
                        Err(ReadError::Closed) => {
                            return flow.abandon("the client closed the connection")
                        }
                        Err(ReadError::Protocol(why)) => return flow.abandon(&why),
                    }
                }
            }
            Output::Effect(effect) => {
                // The wait some firmware needs after a setup, outside the step's deadline.
                if matches!(
                    effect,
                    Effect::Register {
                        after_setup: true,
                        ..
                    }
                ) && inner.config.setup_settle_ms > 0
                {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        inner.config.setup_settle_ms,
                    ))
                    .await;
                }
                let step_deadline = (tokio::time::Instant::now() + step).min(flow_deadline);
                let result = match timeout_at(step_deadline, run_effect(inner, ctx, effect)).await {
                    Ok(r) => r,
                    Err(_) => Err("the database or secret store did not answer in time".into()),
                };
                flow.on_effect(result)
            }
        };
    }
}

/// Runs a store write, again after a pause while `unavailable` says the store is down (an
/// outage may pass within the step's deadline; a refusal will not), at most
/// `EFFECT_ATTEMPTS` times.
async fn through_outages<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    device: &str,
    mut write: impl FnMut() -> F,
    unavailable: fn(&E) -> bool,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if unavailable(&e) && attempt < EFFECT_ATTEMPTS => {
                tracing::warn!(device, error = %e, "store unavailable; retrying");
                attempt += 1;
                tokio::time::sleep(EFFECT_RETRY).await;
            }
            result => return result,
        }
    }
}

async fn run_effect(inner: &Arc<Inner>, ctx: &mut Ctx, effect: Effect) -> Result<(), String> {
    match effect {
        Effect::SaveSecrets {
            amt_password,
            mps_password,
            mebx_password,
        } => {
            let secrets = DeviceSecrets {
                amt_password: Some(amt_password),
                mebx_password,
                mps_password,
            };
            through_outages(
                &ctx.guid,
                || secrets.save(inner.secrets.as_ref(), &ctx.guid),
                homeport_secrets::SecretError::is_unavailable,
            )
            .await
            .map_err(|e| format!("storing the device's credentials: {e}"))
        }
        Effect::Register {
            control_mode,
            mps_username,
            ..
        } => {
            let mut info = ctx.info.clone();
            info.current_mode = Some(control_mode.to_uppercase());
            if !ctx.fqdn.is_empty() {
                info.extra.insert(
                    "dnsSuffix".into(),
                    serde_json::Value::String(ctx.fqdn.clone()),
                );
            }
            let device = NewDevice {
                guid: ctx.guid.clone(),
                tenant_id: ctx.tenant.clone(),
                hostname: Some(ctx.hostname.clone()).filter(|h| !h.is_empty()),
                friendly_name: ctx.friendly_name.clone(),
                tags: ctx.tags.clone(),
                mps_username: mps_username.unwrap_or_default(),
                device_info: Some(info),
            };
            // The device is set up by now: an outage that passes within the step's deadline
            // must not leave it unregistered.
            let upserted = through_outages(
                &ctx.guid,
                || inner.store.upsert_device(device.clone()),
                StoreError::is_unavailable,
            )
            .await;
            match upserted {
                Ok(_) => {
                    let change = if ctx.registered { "updated" } else { "created" };
                    ctx.registered = true;
                    registry_event(inner, ctx, change);
                    Ok(())
                }
                Err(StoreError::TenantConflict { .. }) => {
                    Err("Device belongs to another tenant".into())
                }
                Err(e) => Err(format!("registering the device: {e}")),
            }
        }
        Effect::Refresh { hostname } => {
            let existing = inner
                .store
                .get_device(&ctx.guid)
                .await
                .map_err(|e| format!("database: {e}"))?
                .filter(|d| d.tenant_id == ctx.tenant)
                .ok_or("the device is not registered in this tenant")?;
            let mut info = ctx.info.clone();
            info.current_mode = existing
                .device_info
                .as_ref()
                .and_then(|i| i.current_mode.clone());
            let device = NewDevice {
                guid: ctx.guid.clone(),
                tenant_id: ctx.tenant.clone(),
                hostname: hostname.or(existing.hostname),
                friendly_name: ctx.friendly_name.clone().or(existing.friendly_name),
                tags: existing.tags,
                mps_username: existing.mps_username,
                device_info: Some(info),
            };
            inner
                .store
                .upsert_device(device)
                .await
                .map_err(|e| format!("updating the registry: {e}"))?;
            registry_event(inner, ctx, "updated");
            Ok(())
        }
        Effect::Forget => {
            inner
                .secrets
                .delete(&device_path(&ctx.guid))
                .await
                .map_err(|e| format!("secret store: {e}"))?;
            let removed = inner
                .store
                .delete_device(&ctx.tenant, &ctx.guid)
                .await
                .map_err(|e| format!("database: {e}"))?;
            if removed {
                registry_event(inner, ctx, "deleted");
            }
            Ok(())
        }
    }
}

/// The flow's trace and span ids on an event.
fn traced(e: &mut ev::Event, ctx: &Ctx) {
    if let Some((trace, span)) = ctx
        .traceparent
        .as_deref()
        .and_then(homeport_contracts::tunnel::parse_traceparent)
    {
        e.trace_id = trace.to_string();
        e.span_id = span.to_string();
    }
}

fn registry_event(inner: &Inner, ctx: &Ctx, change: &str) {
    let mut e = envelope(&ctx.tenant, &ctx.guid, change, &inner.source);
    traced(&mut e, ctx);
    e.payload = Some(ev::event::Payload::DeviceRegistryChanged(
        ev::DeviceRegistryChanged {
            change: change.to_string(),
            fields: if change == "updated" {
                vec![
                    "device_info".into(),
                    "mps_username".into(),
                    "secrets".into(),
                ]
            } else {
                Vec::new()
            },
        },
    ));
    let subject = inner.names.device_event(&ctx.tenant, &ctx.guid, change);
    if let Err(err) = inner.events.publish(subject, &e) {
        tracing::error!(device = %ctx.guid, error = %err, "registry event not queued");
    }
}

fn publish(inner: &Inner, ctx: &Ctx, finish: &Finish, exchanges: u32) {
    let mut e = envelope(&ctx.tenant, &ctx.guid, finish.outcome, &inner.source);
    traced(&mut e, ctx);
    e.payload = Some(ev::event::Payload::Provisioning(ev::Provisioning {
        flow: ctx.flow.to_string(),
        outcome: finish.outcome.to_string(),
        status: finish.status.pairs().into_iter().collect(),
        control_mode: finish.control_mode.to_string(),
        profile: ctx.profile.clone(),
        remote_addr: ctx.peer.to_string(),
        duration_ms: ctx.started.elapsed().as_millis() as u64,
        exchanges,
    }));
    let subject = inner
        .names
        .provisioning_event(&ctx.tenant, &ctx.guid, finish.outcome);
    if let Err(err) = inner.events.publish(subject, &e) {
        tracing::error!(device = %ctx.guid, error = %err, "provisioning event not queued");
    }
}

/// Why a request is refused before any WS-Man.
pub(crate) enum Refusal {
    /// Reported to the client as it is.
    Text(String),
    Other(String),
}

impl Refusal {
    fn text(&self) -> String {
        match self {
            Refusal::Text(t) | Refusal::Other(t) => t.clone(),
        }
    }
}

fn store_down(e: impl std::fmt::Display) -> Refusal {
    Refusal::Other(format!(
        "Homeport cannot reach its database or secret store: {e}"
    ))
}

/// The checks of §1.5 and everything the flow needs decided (passwords, CIRA settings).
async fn prepare(
    inner: &Arc<Inner>,
    ctx: &mut Ctx,
    command: &Command,
    facts: DeviceFacts,
) -> Result<Box<dyn Flow>, Refusal> {
    let guid = facts.guid.clone();
    let mode = facts.payload.current_mode;
    let existing = inner.store.get_device(&guid).await.map_err(store_down)?;
    if let Some(d) = &existing {
        if d.tenant_id != ctx.tenant {
            return Err(Refusal::Text(format!(
                "Device {guid} cannot be provisioned in this tenant"
            )));
        }
    }
    ctx.registered = existing.is_some();
    let stored = DeviceSecrets::load(inner.secrets.as_ref(), &guid)
        .await
        .map_err(store_down)?;
    let stored_amt = stored.as_ref().and_then(|s| s.amt_password.clone());
    let supplied = facts.payload.password.clone();
    // For an activated device the client sends the AMT password; it must be the stored one.
    // (memcmp::eq panics on different lengths, so those are compared first.)
    let password_matches = |s: &SecretString| {
        s.expose().len() == supplied.len()
            && openssl::memcmp::eq(s.expose().as_bytes(), supplied.as_bytes())
    };
    match command {
        Command::Activate { profile } => {
            let record = inner
                .store
                .get_config(&ctx.tenant, specs::PROFILE, profile)
                .await
                .map_err(store_down)?
                .ok_or_else(|| {
                    Refusal::Text(format!(
                        "Device {guid} activation failed. Profile {profile} not found"
                    ))
                })?;
            ctx.profile = record.name.clone();
            let spec: ProfileSpec = serde_json::from_value(record.spec)
                .map_err(|e| Refusal::Other(format!("profile {profile} is unreadable: {e}")))?;
            ctx.tags = spec.tags.clone();
            if supplied.is_empty() {
                return Err(Refusal::Text(format!(
                    "Device {guid} activation failed. Missing password."
                )));
            }
            // The client is also the firmware: whatever a PC in pre-provisioning mode is sent
            // could be read by whoever plays it. So a device Homeport has registered as
            // activated is not set up again from mode 0 (an operator deactivates or deletes it
            // first), and no stored credential of an earlier run is ever reused from mode 0.
            if mode == 0 && ctx.registered {
                return Err(Refusal::Text(format!(
                    "Device {guid} activation failed. The device is registered as activated; deactivate it (homeportctl deactivate) or delete it from the registry first."
                )));
            }
            let reusable = if mode == 0 { None } else { stored.as_ref() };
            let (user, password, amt_password) = match mode {
                0 => {
                    let amt = match spec.generate_random_password {
                        true => SecretString::new(specs::random_password(16)),
                        false => object_secret(
                            inner,
                            &ctx.tenant,
                            specs::PROFILE,
                            &record.name,
                            specs::AMT_PASSWORD,
                        )
                        .await?
                        .ok_or_else(|| {
                            Refusal::Other(format!("profile {profile} has no stored AMT password"))
                        })?,
                    };
                    let user = if facts.payload.username.is_empty() {
                        "$$OsAdmin".to_string()
                    } else {
                        facts.payload.username.clone()
                    };
                    (user, SecretString::new(supplied.clone()), amt)
                }
                2 if !spec.is_acm() => {
                    return Err(Refusal::Text(format!(
                        "Device {guid} is in admin control mode; a CCM profile cannot be applied."
                    )))
                }
                _ => {
                    if let Some(s) = &stored_amt {
                        if !password_matches(s) {
                            return Err(Refusal::Text(format!(
                                "Device {guid} activation failed. The AMT password does not match the stored one."
                            )));
                        }
                    }
                    let pw = SecretString::new(supplied.clone());
                    ("admin".to_string(), pw.clone(), pw)
                }
            };
            let acm = if spec.is_acm() {
                Some(acm_plan(inner, ctx, &facts, &spec, &record.name, reusable).await?)
            } else {
                None
            };
            let cira = match &spec.cira_config_name {
                None => None,
                Some(name) => Some(cira_plan(inner, ctx, name, reusable).await?),
            };
            let features = Features {
                kvm: spec.kvm_enabled,
                sol: spec.sol_enabled,
                ider: spec.ider_enabled,
                consent: match spec.user_consent.as_str() {
                    "None" => 0,
                    "KVM" => 1,
                    _ => 4_294_967_295,
                },
            };
            Ok(Box::new(Activation::new(Plan {
                guid,
                current_mode: mode,
                user,
                password,
                amt_password,
                features,
                cira,
                acm,
                network: Some(NetworkPlan {
                    dhcp: spec.dhcp_enabled,
                    ip_sync: spec.ip_sync_enabled,
                }),
                wifi: wifi_plan(inner, ctx, &spec).await?,
            })))
        }
        Command::Deactivate { force } => {
            if mode == 0 {
                return Err(Refusal::Text(format!(
                    "Deactivation failed. Device {guid} is in pre-provisioning mode"
                )));
            }
            // `-f` is for a device Homeport holds no credentials of: with stored ones the
            // client must prove it knows them (it could otherwise make rps forget any device).
            let _ = force;
            let password = match &stored_amt {
                Some(s) if password_matches(s) => s.clone(),
                Some(_) => {
                    return Err(Refusal::Text(format!(
                        "Deactivation failed. The AMT password of device {guid} does not match the stored one."
                    )))
                }
                None if !supplied.is_empty() => SecretString::new(supplied.clone()),
                None => {
                    return Err(Refusal::Text(format!(
                        "Deactivation failed. No credentials for device {guid}."
                    )))
                }
            };
            let _ = mode_name(mode);
            Ok(Box::new(Deactivation::new(&guid, password.expose(), mode)))
        }
        Command::Maintenance { task, force } => {
            let name = task.name();
            if mode == 0 {
                return Err(Refusal::Text(format!(
                    "Device {guid} {name} failed: the device is in pre-provisioning mode"
                )));
            }
            let _ = force;
            let current = match &stored_amt {
                Some(s) if password_matches(s) => s.clone(),
                Some(_) => {
                    return Err(Refusal::Text(format!(
                    "Device {guid} {name} failed: the AMT password does not match the stored one"
                )))
                }
                None if !supplied.is_empty() => SecretString::new(supplied.clone()),
                None => {
                    return Err(Refusal::Text(format!(
                        "Device {guid} {name} failed: no credentials for the device"
                    )))
                }
            };
            let job = match task {
                Task::ChangePassword(fixed) => {
                    let new = match fixed {
                        Some(p) if !specs::valid_amt_password(p) => {
                            return Err(Refusal::Text(format!(
                                "Device {guid} {name} failed: the new password needs 8-32 characters with a lower-case and an upper-case letter, a digit and one of !@#$%^&*"
                            )))
                        }
                        Some(p) => SecretString::new(p.clone()),
                        None => SecretString::new(specs::random_password(16)),
                    };
                    Job::ChangePassword {
                        new,
                        old: current.clone(),
                        mps_password: stored.as_ref().and_then(|s| s.mps_password.clone()),
                        mebx_password: stored.as_ref().and_then(|s| s.mebx_password.clone()),
                    }
                }
                Task::SyncTime => Job::SyncTime {
                    now: chrono::Utc::now().timestamp(),
                },
                Task::SyncIp => {
                    let c = facts.payload.ip_configuration.clone().unwrap_or_default();
                    let field = |k: &str| {
                        c.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    Job::SyncIp(IpConfig {
                        ip: field("ipAddress"),
                        netmask: field("netmask"),
                        gateway: field("gateway"),
                        primary_dns: field("primaryDns"),
                        secondary_dns: field("secondaryDns"),
                    })
                }
                Task::SyncHostname => {
                    let from_info = facts
                        .payload
                        .hostname_info
                        .as_ref()
                        .and_then(|h| h.get("hostname"))
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string();
                    let host = if from_info.is_empty() {
                        facts.payload.hostname.clone()
                    } else {
                        from_info
                    };
                    if host.is_empty() || host.len() > 63 {
                        return Err(Refusal::Text(format!(
                            "Device {guid} {name} failed: the client sent no usable host name"
                        )));
                    }
                    Job::SyncHostname(host)
                }
                Task::SyncDeviceInfo => Job::SyncDeviceInfo,
            };
            Ok(Box::new(Maintenance::new(
                &guid,
                current.expose(),
                mode,
                job,
            )))
        }
    }
}

/// What admin control mode needs: the domain whose suffix is the device's, its provisioning
/// certificate (decoded once per domain version), a root the device trusts, the MEBx password
/// and our nonce.
async fn acm_plan(
    inner: &Inner,
    ctx: &Ctx,
    facts: &DeviceFacts,
    spec: &ProfileSpec,
    profile: &str,
    stored: Option<&DeviceSecrets>,
) -> Result<AcmPlan, Refusal> {
    let guid = &facts.guid;
    let mode = facts.payload.current_mode;
    let mebx = match (
        spec.generate_random_mebx_password,
        stored.and_then(|s| s.mebx_password.clone()),
    ) {
        (true, Some(prev)) => prev,
        (true, None) => SecretString::new(specs::random_password(16)),
        (false, _) => object_secret(
            inner,
            &ctx.tenant,
            specs::PROFILE,
            profile,
            specs::MEBX_PASSWORD,
        )
        .await?
        .ok_or_else(|| Refusal::Other(format!("profile {profile} has no stored MEBx password")))?,
    };
    let mut mc_nonce = [0u8; 20];
    openssl::rand::rand_bytes(&mut mc_nonce).map_err(|e| Refusal::Other(e.to_string()))?;
    if mode == 2 {
        // Already in admin control mode: nothing is signed or set again, and the stored MEBx
        // password (if any) stays what it is.
        return Ok(AcmPlan {
            chain: Vec::new(),
            key: None,
            mc_nonce,
            mebx_password: stored.and_then(|s| s.mebx_password.clone()),
        });
    }
    let fqdn = facts
        .payload
        .fqdn
        .trim()
        .trim_end_matches('.')
        .to_lowercase();
    if fqdn.is_empty() {
        return Err(Refusal::Text(format!(
            "Device {guid} activation failed. Admin control mode needs the device's DNS suffix (fqdn)."
        )));
    }
    let domain = inner
        .store
        .find_config_by_unique_key(&ctx.tenant, specs::DOMAIN, &fqdn)
        .await
        .map_err(store_down)?
        .ok_or_else(|| {
            Refusal::Text(format!(
                "Device {guid} activation failed. No domain has the suffix {fqdn}: the device's DNS suffix must match a domain's exactly."
            ))
        })?;
    let cert = inner.provisioning_cert(&ctx.tenant, &domain).await?;
    if facts.payload.cert_hashes.is_empty() || !cert.trusted_by(&facts.payload.cert_hashes) {
        return Err(Refusal::Text(format!(
            "Device {guid} activation failed. Invalid domain certificate: the device does not trust its root (SHA-256 {}).",
            cert.root_sha256
        )));
    }
    Ok(AcmPlan {
        chain: cert.chain.clone(),
        key: Some(cert.key.clone()),
        mc_nonce,
        mebx_password: Some(mebx),
    })
}

/// The profile's Wi-Fi links with their settings and passphrases, by priority.
async fn wifi_plan(inner: &Inner, ctx: &Ctx, spec: &ProfileSpec) -> Result<WifiPlan, Refusal> {
    let mut profiles = Vec::new();
    for (name, priority) in &spec.wifi_configs {
        let (stored_name, w): (String, specs::WirelessSpec) =
            linked_spec(inner, &ctx.tenant, specs::WIRELESS, "wireless config", name).await?;
        let passphrase = object_secret(
            inner,
            &ctx.tenant,
            specs::WIRELESS,
            name,
            specs::PSK_PASSPHRASE,
        )
        .await?
        .ok_or_else(|| {
            Refusal::Other(format!("wireless config {name} has no stored passphrase"))
        })?;
        profiles.push(WifiProfile {
            name: stored_name,
            ssid: w.ssid,
            authentication_method: w.authentication_method,
            encryption_method: w.encryption_method,
            priority: *priority,
            passphrase,
        });
    }
    profiles.sort_by_key(|p| p.priority);
    Ok(WifiPlan {
        local_sync: spec.local_wifi_sync_enabled,
        profiles,
    })
}

/// The secret `key` of an admin object (a profile's static password, a CIRA config's, a
/// Wi-Fi passphrase), if stored.
async fn object_secret(
    inner: &Inner,
    tenant: &str,
    kind: &str,
    name: &str,
    key: &str,
) -> Result<Option<SecretString>, Refusal> {
    Ok(inner
        .secrets
        .get(&specs::secret_path(tenant, kind, name))
        .await
        .map_err(store_down)?
        .and_then(|m| m.get(key).cloned()))
}

/// An admin object a profile names (its name as stored, and its settings); `what` words it
/// in the refusal.
async fn linked_spec<T: serde::de::DeserializeOwned>(
    inner: &Inner,
    tenant: &str,
    kind: &str,
    what: &str,
    name: &str,
) -> Result<(String, T), Refusal> {
    let record = inner
        .store
        .get_config(tenant, kind, name)
        .await
        .map_err(store_down)?
        .ok_or_else(|| Refusal::Other(format!("{what} {name} of the profile does not exist")))?;
    let spec = serde_json::from_value(record.spec)
        .map_err(|e| Refusal::Other(format!("{what} {name} is unreadable: {e}")))?;
    Ok((record.name, spec))
}

async fn cira_plan(
    inner: &Inner,
    ctx: &Ctx,
    name: &str,
    stored: Option<&DeviceSecrets>,
) -> Result<CiraPlan, Refusal> {
    let (_, spec): (String, CiraSpec) =
        linked_spec(inner, &ctx.tenant, specs::CIRA, "CIRA config", name).await?;
    let password = if spec.static_password {
        object_secret(inner, &ctx.tenant, specs::CIRA, name, specs::MPS_PASSWORD)
            .await?
            .ok_or_else(|| Refusal::Other(format!("CIRA config {name} has no stored password")))?
    } else {
        // Keep a password an earlier run stored: the device may hold it already.
        stored
            .and_then(|s| s.mps_password.clone())
            .unwrap_or_else(|| SecretString::new(specs::random_password(16)))
    };
    let mut env = [0u8; 16];
    openssl::rand::rand_bytes(&mut env).map_err(|e| Refusal::Other(e.to_string()))?;
    Ok(CiraPlan {
        address: spec.mps_server_address,
        format: spec.server_address_format,
        port: spec.mps_port,
        username: spec.username,
        password,
        common_name: spec.common_name,
        root_certificate: spec.mps_root_certificate,
        environment_domain: format!("{}.com", homeport_apf::guid_from_wire(&env)),
    })
}
