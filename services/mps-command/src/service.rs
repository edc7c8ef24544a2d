//! DeviceService: thin handlers. Each one checks the caller's tenant, opens a conversation
//! with the device, runs the feature's call sequence, emits the command event and maps the
//! error to a status in one place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use homeport_contracts::events::envelope;
use homeport_contracts::tunnel::{child_traceparent, parse_traceparent};
use homeport_proto::device::v1 as pb;
use homeport_proto::device::v1::device_service_server::DeviceService;
use homeport_proto::events::v1 as ev;
use homeport_store::canonical_guid;
use tonic::{Request, Response, Status};

use crate::error::{code_name, CommandError};
use crate::features;
use crate::link::Call;
use crate::Inner;
use homeport_auth::{caller as verified_caller, Caller};

pub struct DeviceApi {
    pub(crate) inner: Arc<Inner>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

/// Runs one command on one device: tenant check, call, event, metrics.
macro_rules! command {
    ($self:ident, $caller:expr, $guid:expr, $action:expr, $params:expr, |$call:ident| $body:expr) => {{
        let inner = &$self.inner;
        let (caller, parent): &(Caller, Option<String>) = &$caller;
        // One span per command (exported when OTLP is configured); the device exchanges and
        // the ingress continue its trace through the traceparent sent with each request.
        let span = homeport_telemetry::traces::TraceSpan::start(
            "device.command",
            true,
            parent.as_deref(),
            vec![
                ("rpc.system", "grpc".to_string()),
                ("homeport.action", $action.to_string()),
                ("homeport.device", clip($guid, MAX_GUID_TEXT)),
                ("homeport.tenant", caller.tenant.clone()),
            ],
        );
        let trace = span
            .traceparent()
            .map_or_else(|| child_traceparent(parent.as_deref()), str::to_owned);
        let params: HashMap<String, String> = $params;
        let invalid = check_params(&params);
        let record = CommandRecord {
            inner: inner.clone(),
            caller: caller.clone(),
            trace: trace.clone(),
            guid: clip($guid, MAX_GUID_TEXT),
            action: $action,
            parameters: Some(clipped(params)),
            started: Instant::now(),
        };
        let work = async {
            let guid = canonical_guid($guid).ok_or_else(|| {
                CommandError::InvalidArgument(format!(
                    "{:?} is not a device GUID",
                    clip($guid, MAX_GUID_TEXT)
                ))
            })?;
            if let Some(e) = invalid {
                return Err(e);
            }
            inner.authorize_device(&caller.tenant, &guid).await?;
            // Only an authorised, valid command is announced as about to change a device.
            record.requested();
            let mut $call: Call<'_> = inner.link.open(&guid, trace.clone()).await?;
            let $call = &mut $call;
            $body.await
        };
        // Every log line of the command carries its trace and span ids.
        let (trace_id, span_id) = parse_traceparent(&trace).unwrap_or_default();
        let log_span = tracing::info_span!("command", trace_id, span_id);
        let result: Result<_, CommandError> = match tokio::time::timeout(
            inner.config.command_timeout(),
            tracing::Instrument::instrument(work, log_span.clone()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(CommandError::Timeout(clip($guid, MAX_GUID_TEXT))),
        };
        log_span.in_scope(|| record.finish(&result));
        span.end(result.as_ref().err().map(|e| e.to_string()).as_deref());
        result
    }};
}

/// Longest parameter a client may send in a command (alarm names, instance ids, consent
/// modes are all far shorter); longer ones are refused, and never copied into events.
const MAX_PARAM_LEN: usize = 256;
/// How much of a malformed guid is echoed in errors and events.
const MAX_GUID_TEXT: usize = 40;

/// `s`, cut to at most `max` characters.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The error for a parameter that is too long, if any.
fn check_params(params: &HashMap<String, String>) -> Option<CommandError> {
    params
        .iter()
        .find(|(_, v)| v.chars().count() > MAX_PARAM_LEN)
        .map(|(k, v)| {
            CommandError::InvalidArgument(format!(
                "{k} is {} characters long; at most {MAX_PARAM_LEN} are allowed",
                v.chars().count()
            ))
        })
}

/// Parameters as events carry them: each cut to `MAX_PARAM_LEN` characters.
fn clipped(params: HashMap<String, String>) -> HashMap<String, String> {
    params
        .into_iter()
        .map(|(k, v)| {
            if v.chars().count() > MAX_PARAM_LEN {
                (k, clip(&v, MAX_PARAM_LEN))
            } else {
                (k, v)
            }
        })
        .collect()
}

/// The verified caller and the W3C trace context the caller sent, if any.
fn caller<T>(req: &Request<T>) -> Result<(Caller, Option<String>), Status> {
    let parent = req
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((verified_caller(req)?, parent))
}

/// One command's event, published exactly once: when the command ends, or, if the caller
/// goes away first (tonic drops the handler's future), as CANCELLED, since the device may
/// already have acted.
struct CommandRecord {
    inner: Arc<Inner>,
    caller: Caller,
    trace: String,
    guid: String,
    action: &'static str,
    /// Taken when the event is published.
    parameters: Option<HashMap<String, String>>,
    started: Instant,
}

/// Commands that change a device: they also get a `CommandRequested` event up front.
const MUTATING: [&str; 9] = [
    "PowerAction",
    "SetBootOptions",
    "SetFeatures",
    "StartUserConsent",
    "SendUserConsentCode",
    "CancelUserConsent",
    "AddAlarm",
    "DeleteAlarm",
    "Deactivate",
];

impl CommandRecord {
    /// Publishes `CommandRequested` for a command that changes the device.
    fn requested(&self) {
        if !MUTATING.contains(&self.action) {
            return;
        }
        let Some(guid) = canonical_guid(&self.guid) else {
            return;
        };
        let payload = ev::event::Payload::CommandRequested(ev::CommandRequested {
            action: self.action.to_string(),
            parameters: self.parameters.clone().unwrap_or_default(),
        });
        self.publish(&guid, payload);
    }

    /// Publishes one event of this command on its subject.
    fn publish(&self, guid: &str, payload: ev::event::Payload) {
        let caller = &self.caller;
        let mut event = envelope(&caller.tenant, guid, self.action, &self.inner.source);
        event.actor = caller.subject.clone();
        if let Some((trace, span)) = parse_traceparent(&self.trace) {
            event.trace_id = trace.to_string();
            event.span_id = span.to_string();
        }
        event.payload = Some(payload);
        let subject = self
            .inner
            .names
            .command_event(&caller.tenant, guid, self.action);
        if let Err(e) = self.inner.events.publish(subject, &event) {
            tracing::error!(device = %guid, error = %e, "command event not queued");
        }
    }

    fn finish<T>(mut self, result: &Result<T, CommandError>) {
        self.emit(result.as_ref().map(|_| ()));
    }

    fn emit(&mut self, outcome: Result<(), &CommandError>) {
        let Some(parameters) = self.parameters.take() else {
            return;
        };
        let m = &self.inner.metrics;
        m.commands.inc();
        m.latency.observe(self.started.elapsed());
        let guid =
            canonical_guid(&self.guid).unwrap_or_else(|| self.guid.chars().take(40).collect());
        let action = self.action;
        let trace = self.trace.as_str();
        let (result, detail, return_value) = match outcome {
            Ok(()) => ("ok".to_string(), String::new(), 0),
            Err(e) => {
                m.command_errors.inc();
                tracing::info!(device = %guid, action, trace, error = %e, "command failed");
                let rv = match e {
                    CommandError::ReturnValue { value, .. } => *value,
                    _ => 0,
                };
                (code_name(e.code()).to_string(), e.to_string(), rv)
            }
        };
        let payload = ev::event::Payload::CommandExecuted(ev::CommandExecuted {
            action: action.to_string(),
            parameters,
            result,
            detail,
            return_value,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        self.publish(&guid, payload);
    }
}

impl Drop for CommandRecord {
    fn drop(&mut self) {
        if self.parameters.is_some() {
            self.emit(Err(&CommandError::Cancelled(self.guid.clone())));
        }
    }
}

fn params(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn reply<T>(r: Result<T, CommandError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| e.to_status())
}

#[tonic::async_trait]
impl DeviceService for DeviceApi {
    async fn get_power_state(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::PowerState>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "GetPowerState",
            HashMap::new(),
            |call| features::power_state(call)
        ))
    }

    async fn get_power_states(
        &self,
        req: Request<pb::GetPowerStatesRequest>,
    ) -> Result<Response<pb::GetPowerStatesResponse>, Status> {
        let c = caller(&req)?;
        let guids = req.into_inner().guids;
        if guids.len() > 10_000 {
            return Err(Status::invalid_argument("at most 10000 devices per call"));
        }
        let entries = stream::iter(guids)
            .map(|g| {
                let c = c.clone();
                async move {
                    let r = command!(self, c, &g, "GetPowerState", HashMap::new(), |call| {
                        features::power_state(call)
                    });
                    match r {
                        Ok(state) => pb::PowerStateEntry {
                            guid: g,
                            state: Some(state),
                            ..Default::default()
                        },
                        Err(e) => pb::PowerStateEntry {
                            guid: g,
                            state: None,
                            error_code: code_name(e.code()).to_string(),
                            error_message: e.to_string(),
                        },
                    }
                }
            })
            .buffered(self.inner.config.bulk_concurrency)
            .collect()
            .await;
        Ok(Response::new(pb::GetPowerStatesResponse { entries }))
    }

    async fn power_action(
        &self,
        req: Request<pb::PowerActionRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let p = params(&[("action", r.action.to_string())]);
        reply(command!(self, c, &r.guid, "PowerAction", p, |call| {
            features::power_action(call, r.action)
        }))
    }

    async fn set_boot_options(
        &self,
        req: Request<pb::BootOptionsRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let p = params(&[
            ("action", r.action.to_string()),
            ("use_sol", r.use_sol.to_string()),
        ]);
        reply(command!(self, c, &r.guid, "SetBootOptions", p, |call| {
            features::boot_options(call, r.action, r.use_sol)
        }))
    }

    async fn get_power_capabilities(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::PowerCapabilities>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "GetPowerCapabilities",
            HashMap::new(),
            |call| features::power_capabilities(call)
        ))
    }

    async fn get_version(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::AmtVersion>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "GetVersion",
            HashMap::new(),
            |call| features::version(call)
        ))
    }

    async fn get_general_settings(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::GeneralSettings>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "GetGeneralSettings",
            HashMap::new(),
            |call| features::general_settings(call)
        ))
    }

    async fn get_hardware_info(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::HardwareInfo>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "GetHardwareInfo",
            HashMap::new(),
            |call| features::hardware_info(call)
        ))
    }

    async fn get_features(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::AmtFeatures>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "GetFeatures",
            HashMap::new(),
            |call| features::get_features(call)
        ))
    }

    async fn set_features(
        &self,
        req: Request<pb::SetFeaturesRequest>,
    ) -> Result<Response<pb::AmtFeatures>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let p = params(&[
            ("user_consent", r.user_consent.clone()),
            ("kvm", r.enable_kvm.to_string()),
            ("sol", r.enable_sol.to_string()),
            ("ider", r.enable_ider.to_string()),
        ]);
        reply(command!(self, c, &r.guid, "SetFeatures", p, |call| {
            features::set_features(call, &r)
        }))
    }

    async fn start_user_consent(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "StartUserConsent",
            HashMap::new(),
            |call| features::start_consent(call)
        ))
    }

    async fn send_user_consent_code(
        &self,
        req: Request<pb::SendUserConsentCodeRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        // The code itself is a one-time secret shown on the device: never in events.
        if r.code.len() > 16 {
            return Err(Status::invalid_argument(
                "a consent code has at most 16 characters",
            ));
        }
        reply(command!(
            self,
            c,
            &r.guid,
            "SendUserConsentCode",
            HashMap::new(),
            |call| features::send_consent_code(call, &r.code)
        ))
    }

    async fn cancel_user_consent(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "CancelUserConsent",
            HashMap::new(),
            |call| features::cancel_consent(call)
        ))
    }

    async fn get_event_log(
        &self,
        req: Request<pb::GetEventLogRequest>,
    ) -> Result<Response<pb::EventLog>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        reply(command!(
            self,
            c,
            &r.guid,
            "GetEventLog",
            HashMap::new(),
            |call| features::event_log(call, r.max_records)
        ))
    }

    async fn get_audit_log(
        &self,
        req: Request<pb::GetAuditLogRequest>,
    ) -> Result<Response<pb::AuditLog>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let p = params(&[("start_index", r.start_index.to_string())]);
        reply(command!(self, c, &r.guid, "GetAuditLog", p, |call| {
            features::audit_log(call, r.start_index)
        }))
    }

    async fn list_alarms(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::AlarmList>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        reply(command!(
            self,
            c,
            &g,
            "ListAlarms",
            HashMap::new(),
            |call| features::list_alarms(call)
        ))
    }

    async fn add_alarm(
        &self,
        req: Request<pb::AddAlarmRequest>,
    ) -> Result<Response<pb::Alarm>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let p = params(&[
            ("name", r.name.clone()),
            ("start_time", r.start_time.to_string()),
        ]);
        reply(command!(self, c, &r.guid, "AddAlarm", p, |call| {
            features::add_alarm(call, &r, now_unix())
        }))
    }

    async fn delete_alarm(
        &self,
        req: Request<pb::DeleteAlarmRequest>,
    ) -> Result<Response<pb::DeleteAlarmResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let p = params(&[("instance_id", r.instance_id.clone())]);
        reply(
            command!(self, c, &r.guid, "DeleteAlarm", p, |call| {
                features::delete_alarm(call, &r.instance_id)
            })
            .map(|()| pb::DeleteAlarmResponse {}),
        )
    }

    async fn deactivate(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        let r = command!(self, c, &g, "Deactivate", HashMap::new(), |call| {
            features::deactivate(call)
        })?;
        if r.return_value == 0 {
            // AMT is unprovisioned: the device no longer belongs to Homeport.
            crate::registry::remove_device(&self.inner, &c.0, &g)
                .await
                .map_err(|e| e.to_status())?;
        }
        Ok(Response::new(r))
    }

    async fn disconnect(
        &self,
        req: Request<pb::DeviceRef>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let c = caller(&req)?;
        let g = req.into_inner().guid;
        let timeout = self.inner.config.exchange_timeout();
        let r = command!(self, c, &g, "Disconnect", HashMap::new(), |call| {
            features::disconnect(call, self.inner.link.tunnel(), timeout)
        })?;
        Ok(Response::new(r))
    }
}
