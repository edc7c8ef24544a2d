//! The MPS routes: the device registry and the AMT features, in the reference's JSON shapes,
//! over mps-command's DeviceRegistry and DeviceService.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use homeport_proto::device::v1 as pb;
use serde_json::{json, Map, Value};

use crate::error::{device_status, service_status, ApiError, ApiResult, FieldError};
use crate::{json, param, query_pairs, status_json, AppState, Authed, JsonBody};

/// Largest `$top` of one device listing.
const MAX_TOP: u64 = 1000;
/// With a status filter the listing scans; `$skip + $top` is bounded so one call stays short.
const MAX_STATUS_SCAN: u64 = 10_000;

fn iso(unix: i64) -> Value {
    if unix <= 0 {
        return Value::Null;
    }
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// The reference's device object, with the connection history fields.
pub fn device_json(d: &pb::Device) -> Value {
    let connected = d.status == pb::ConnectionStatus::Connected as i32;
    let info = if d.fw_version.is_empty() && d.control_mode.is_empty() {
        Value::Null
    } else {
        json!({
            "fwVersion": d.fw_version,
            "fwBuild": d.fw_build,
            "fwSku": d.fw_sku,
            "currentMode": d.control_mode,
            "features": "",
            "ipAddress": "",
            "lastUpdated": iso(d.updated_at),
        })
    };
    json!({
        "guid": d.guid,
        "hostname": non_empty(&d.hostname),
        "tags": d.tags,
        "mpsInstance": if connected { non_empty(&d.node) } else { Value::Null },
        "connectionStatus": connected,
        "mpsusername": d.mps_username,
        "tenantId": d.tenant,
        "friendlyName": non_empty(&d.friendly_name),
        "dnsSuffix": Value::Null,
        "lastConnected": iso(d.last_connected_at),
        "lastSeen": iso(d.last_seen),
        "lastDisconnected": iso(d.last_disconnected_at),
        "deviceInfo": info,
    })
}

/// express-validator's `isUUID()`: any 8-4-4-4-12 hex string.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn check_guid_param(guid: &str) -> ApiResult<()> {
    if is_uuid(guid) {
        Ok(())
    } else {
        Err(ApiError::Validation(vec![FieldError::new(
            "params",
            "guid",
            "Invalid value",
            Some(&Value::String(guid.to_owned())),
        )]))
    }
}

fn int_param(
    pairs: &[(String, String)],
    name: &str,
    default: u64,
    max: u64,
    errors: &mut Vec<FieldError>,
) -> u64 {
    match param(pairs, name) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => n,
            _ => {
                errors.push(FieldError::new(
                    "query",
                    name,
                    format!("{name} must be an integer between 0 and {max}"),
                    Some(&Value::String(v.to_owned())),
                ));
                default
            }
        },
    }
}

fn bool_param(
    pairs: &[(String, String)],
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<bool> {
    let v = param(pairs, name)?;
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => {
            errors.push(FieldError::new(
                "query",
                name,
                "Invalid value",
                Some(&Value::String(v.to_owned())),
            ));
            None
        }
    }
}

/// GET /devices
pub async fn list_devices(
    State(s): State<AppState>,
    a: Authed,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let mut errors = Vec::new();
    let top = int_param(&pairs, "$top", 25, MAX_TOP, &mut errors);
    let skip = int_param(&pairs, "$skip", 0, u64::from(u32::MAX), &mut errors);
    let count = bool_param(&pairs, "$count", &mut errors).unwrap_or(false);
    let hostname = param(&pairs, "hostname").unwrap_or_default();
    if hostname.len() > 256 {
        errors.push(FieldError::new(
            "query",
            "hostname",
            "hostname must be at most 256 characters",
            None,
        ));
    }
    let any_tag = match param(&pairs, "method") {
        None => true,
        Some(m) if m.eq_ignore_ascii_case("or") => true,
        Some(m) if m.eq_ignore_ascii_case("and") => false,
        Some(m) => {
            errors.push(FieldError::new(
                "query",
                "method",
                "method must be AND or OR",
                Some(&Value::String(m.into())),
            ));
            true
        }
    };
    let status = match param(&pairs, "status") {
        None | Some("") => pb::ConnectionStatus::Unspecified,
        Some("1") => pb::ConnectionStatus::Connected,
        Some("0") => pb::ConnectionStatus::Disconnected,
        Some(v) => {
            errors.push(FieldError::new(
                "query",
                "status",
                "status must be 0 or 1",
                Some(&Value::String(v.into())),
            ));
            pb::ConnectionStatus::Unspecified
        }
    };
    let search = param(&pairs, "search").unwrap_or_default();
    if search.len() > 256 {
        errors.push(FieldError::new(
            "query",
            "search",
            "search must be at most 256 characters",
            None,
        ));
    }
    if status != pb::ConnectionStatus::Unspecified && skip + top > MAX_STATUS_SCAN {
        errors.push(FieldError::new(
            "query",
            "$skip",
            format!("with a status filter, $skip + $top must be at most {MAX_STATUS_SCAN}"),
            None,
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let tags: Vec<String> = param(&pairs, "tags")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let base = pb::ListDevicesRequest {
        tags,
        hostname: hostname.to_owned(),
        status: status as i32,
        search: search.to_owned(),
        friendly_name: param(&pairs, "friendlyName").unwrap_or_default().to_owned(),
        any_tag,
        ..Default::default()
    };
    let mut devices = Vec::new();
    let mut total = 0;
    if status == pb::ConnectionStatus::Unspecified {
        if top > 0 || count {
            let r = s
                .registry
                .clone()
                .list_devices(a.call(
                    &s,
                    pb::ListDevicesRequest {
                        page_size: u32::try_from(top.max(1)).unwrap_or(1),
                        page_token: skip.to_string(),
                        with_total: count,
                        ..base
                    },
                ))
                .await
                .map_err(service_status)?
                .into_inner();
            total = r.total;
            if top > 0 {
                devices = r.devices;
            }
        }
    } else {
        // Matching devices are found by scanning, so the first `$skip` are read and dropped.
        let mut token = String::new();
        let mut seen = 0u64;
        // At least one call (it also counts, for `$count` with `$top=0`).
        loop {
            let r = s
                .registry
                .clone()
                .list_devices(
                    a.call(
                        &s,
                        pb::ListDevicesRequest {
                            page_size: u32::try_from(
                                (skip + top).saturating_sub(seen).clamp(1, MAX_TOP),
                            )
                            .unwrap_or(1),
                            page_token: token.clone(),
                            with_total: count && total == 0,
                            ..base.clone()
                        },
                    ),
                )
                .await
                .map_err(service_status)?
                .into_inner();
            total = total.max(r.total);
            for d in r.devices {
                seen += 1;
                if seen > skip && (devices.len() as u64) < top {
                    devices.push(d);
                }
            }
            token = r.next_page_token;
            if token.is_empty() || devices.len() as u64 >= top {
                break;
            }
        }
    }
    let data: Vec<Value> = devices.iter().map(device_json).collect();
    Ok(if count {
        json(json!({"data": data, "totalCount": total}))
    } else {
        json(Value::Array(data))
    })
}

/// GET /devices/stats
pub async fn stats(State(s): State<AppState>, a: Authed) -> ApiResult {
    let r = s
        .registry
        .clone()
        .get_fleet_stats(a.call(&s, pb::GetFleetStatsRequest {}))
        .await
        .map_err(service_status)?
        .into_inner();
    Ok(json(json!({
        "totalCount": r.total,
        "connectedCount": r.connected,
        "disconnectedCount": r.disconnected,
        "nodes": r.nodes.iter().map(|n| json!({"node": n.node, "connectedCount": n.connected})).collect::<Vec<_>>(),
    })))
}

/// GET /devices/tags
pub async fn tags(State(s): State<AppState>, a: Authed) -> ApiResult {
    let r = s
        .registry
        .clone()
        .list_tags(a.call(&s, pb::ListTagsRequest {}))
        .await
        .map_err(service_status)?
        .into_inner();
    Ok(json(json!(r.tags)))
}

/// The caller's device of that guid, if it has one.
pub(crate) async fn get(
    s: &AppState,
    a: &Authed,
    guid: &str,
) -> Result<Option<pb::Device>, ApiError> {
    match s
        .registry
        .clone()
        .get_device(a.call(
            s,
            pb::DeviceRef {
                guid: guid.to_owned(),
            },
        ))
        .await
    {
        Ok(d) => Ok(Some(d.into_inner())),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(service_status(e)),
    }
}

/// GET /devices/{guid}: another tenant's device is answered like an unknown one (404).
pub async fn get_device(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    check_guid_param(&guid)?;
    match get(&s, &a, &guid).await? {
        Some(d) => Ok(json(device_json(&d))),
        None => Err(ApiError::NotFoundEmpty),
    }
}

/// GET /devices/redirectstatus/{guid}: Homeport has no redirection relay, so nothing is
/// ever redirected; the device must be connected, as in MPS.
pub async fn redirect_status(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    check_guid_param(&guid)?;
    connected(&s, &a, &guid).await?;
    Ok(json(
        json!({"isKVMConnected": false, "isSOLConnected": false, "isIDERConnected": false}),
    ))
}

async fn connected(s: &AppState, a: &Authed, guid: &str) -> ApiResult<pb::Device> {
    match get(s, a, guid).await? {
        Some(d) if d.status == pb::ConnectionStatus::Connected as i32 => Ok(d),
        _ => Err(ApiError::DeviceNotFound(guid.to_owned())),
    }
}

/// DELETE /devices/refresh/{guid}: mps-command reads credentials from the secret store and
/// drops what it cached on every registry change, so there is nothing to rebuild; the
/// answer tells whether the device is connected, as MPS's does.
pub async fn refresh(State(s): State<AppState>, a: Authed, Path(guid): Path<String>) -> ApiResult {
    check_guid_param(&guid)?;
    match get(&s, &a, &guid).await? {
        Some(d) if d.status == pb::ConnectionStatus::Connected as i32 => Ok(json(
            json!({"success": 200, "description": format!("Device info refreshed : {guid}")}),
        )),
        _ => Err(ApiError::NotFoundEmpty),
    }
}

/// Body checks of POST and PATCH /devices, express-validator style.
fn device_body(body: &Value, errors: &mut Vec<FieldError>) {
    let field = |k: &str| body.get(k);
    match field("guid") {
        Some(Value::String(g)) if is_uuid(g) => {}
        v => errors.push(FieldError::new("body", "guid", "Invalid value", v)),
    }
    for k in ["hostname", "friendlyName", "mpsusername"] {
        match field(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if k == "hostname" && v.chars().count() > 255 => {
                errors.push(FieldError::new(
                    "body",
                    k,
                    "Hostname must be less than 256 characters",
                    field(k),
                ))
            }
            Some(Value::String(_)) => {}
            v => errors.push(FieldError::new("body", k, "Invalid value", v)),
        }
    }
    match field("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        v => errors.push(FieldError::new(
            "body",
            "tags",
            "tags should be an array of strings",
            v,
        )),
    }
    match field("deviceInfo") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        v => errors.push(FieldError::new(
            "body",
            "deviceInfo",
            "deviceInfo should be an object if provided",
            v,
        )),
    }
    for k in ["connect", "disconnect"] {
        match field(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {}
            v => errors.push(FieldError::new("body", k, "Invalid value", v)),
        }
    }
}

fn str_field(body: &Value, k: &str) -> Option<String> {
    body.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn tags_field(body: &Value) -> Option<Vec<String>> {
    body.get("tags").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

/// The fields a body sets, as an update mask.
fn update_of(body: &Value, guid: &str) -> pb::UpdateDeviceRequest {
    let mut mask = Vec::new();
    let mut r = pb::UpdateDeviceRequest {
        guid: guid.to_owned(),
        ..Default::default()
    };
    if body.get("hostname").is_some() {
        r.hostname = str_field(body, "hostname").unwrap_or_default();
        mask.push("hostname".to_owned());
    }
    if body.get("friendlyName").is_some() {
        r.friendly_name = str_field(body, "friendlyName").unwrap_or_default();
        mask.push("friendly_name".to_owned());
    }
    if body.get("tags").is_some() {
        r.tags = tags_field(body).unwrap_or_default();
        mask.push("tags".to_owned());
    }
    r.update_mask = mask;
    r
}

async fn update(s: &AppState, a: &Authed, body: &Value, guid: &str) -> ApiResult<pb::Device> {
    let r = update_of(body, guid);
    if r.update_mask.is_empty() {
        return get(s, a, guid).await?.ok_or(ApiError::NotFoundEmpty);
    }
    s.registry
        .clone()
        .update_device(a.call(s, r))
        .await
        .map(tonic::Response::into_inner)
        .map_err(service_status)
}

/// POST /devices: create, or update the caller's device of that guid (200).
pub async fn create_device(
    State(s): State<AppState>,
    a: Authed,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let mut errors = Vec::new();
    device_body(&body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let guid = str_field(&body, "guid")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if get(&s, &a, &guid).await?.is_some() {
        let d = update(&s, &a, &body, &guid).await?;
        return Ok(json(device_json(&d)));
    }
    let created = s
        .registry
        .clone()
        .create_device(a.call(
            &s,
            pb::CreateDeviceRequest {
                guid: guid.clone(),
                hostname: str_field(&body, "hostname").unwrap_or_default(),
                friendly_name: str_field(&body, "friendlyName").unwrap_or_default(),
                tags: tags_field(&body).unwrap_or_default(),
                mps_username: str_field(&body, "mpsusername").unwrap_or_default(),
                ..Default::default()
            },
        ))
        .await;
    match created {
        Ok(d) => Ok(status_json(
            StatusCode::CREATED,
            device_json(&d.into_inner()),
        )),
        // The guid belongs to another tenant; said the way MPS says it (its unique key).
        Err(e) if e.code() == tonic::Code::AlreadyExists => Err(ApiError::RpsError(
            "Unique key violation",
            format!("Device ID: {guid} already exists"),
        )),
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            Err(ApiError::Validation(vec![FieldError::new(
                "body",
                field_of(e.message()),
                e.message().to_owned(),
                None,
            )]))
        }
        Err(e) => Err(service_status(e)),
    }
}

/// The body field a registry validation message is about.
fn field_of(message: &str) -> &'static str {
    if message.starts_with("mps_username") {
        "mpsusername"
    } else if message.starts_with("hostname") {
        "hostname"
    } else if message.starts_with("friendly_name") {
        "friendlyName"
    } else if message.starts_with("tags") {
        "tags"
    } else {
        "guid"
    }
}

/// PATCH /devices
pub async fn update_device(
    State(s): State<AppState>,
    a: Authed,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let mut errors = Vec::new();
    device_body(&body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let guid = str_field(&body, "guid")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match update(&s, &a, &body, &guid).await {
        Ok(d) => Ok(json(device_json(&d))),
        Err(ApiError::NotFoundEmpty) => Err(ApiError::NotFoundMessage(format!(
            "Device ID {guid} not found"
        ))),
        Err(e) => Err(e),
    }
}

/// DELETE /devices/{guid}: the registry row and the device's secrets go together.
pub async fn delete_device(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    check_guid_param(&guid)?;
    let mut errors = Vec::new();
    bool_param(
        &query_pairs(q.as_deref()),
        "isSecretToBeDeleted",
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    match s
        .registry
        .clone()
        .delete_device(a.call(&s, pb::DeviceRef { guid: guid.clone() }))
        .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) if e.code() == tonic::Code::NotFound => Err(ApiError::NotFoundMessage(format!(
            "Device ID {guid} not found"
        ))),
        Err(e) => Err(service_status(e)),
    }
}

/// DELETE /devices/disconnect/{guid}: the device's ingress node ends its CIRA session (the
/// device reconnects by itself, as after any disconnect).
pub async fn disconnect(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    check_guid_param(&guid)?;
    s.devices
        .clone()
        .disconnect(a.call(&s, guid_ref(&guid)))
        .await
        .map_err(|e| device_status(e, &guid))?;
    Ok(json(json!({
        "success": 200,
        "description": format!("Device CIRA connection disconnected : {guid}"),
    })))
}

// ------------------------------------------------------------------------------------
// AMT routes
// ------------------------------------------------------------------------------------

/// A device call's result in MPS's `{"Header":…,"Body":{ReturnValue, ReturnValueStr}}` shape,
/// with MPS's names of AMT's status codes.
fn return_body(rv: u32) -> Value {
    let name = match rv {
        0 => "SUCCESS",
        1 => "INTERNAL_ERROR",
        2 => "NOT_READY",
        3 => "INVALID_PT_MODE",
        4 => "INVALID_MESSAGE_LENGTH",
        16 => "NOT_PERMITTED",
        35 => "INVALID_INDEX",
        36 => "INVALID_PARAMETER",
        2066 => "UNSUPPORTED",
        2076 => "BLOCKING_COMPONENT",
        4096 => "JOB_STARTED",
        4097 => "INVALID_STATE_TRANSITION",
        _ => "UNKNOWN_ERROR",
    };
    json!({"Header": {}, "Body": {"ReturnValue": rv, "ReturnValueStr": name}})
}

/// mps-command reports a non-zero ReturnValue as FAILED_PRECONDITION
/// "<Method> returned <n> (<TEXT>)"; MPS answers such results with their value.
fn return_value_of(status: &tonic::Status) -> Option<u32> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    let m = status.message();
    let rest = &m[m.find(" returned ")? + " returned ".len()..];
    rest.split(' ').next()?.parse().ok()
}

macro_rules! device_call {
    ($s:expr, $a:expr, $guid:expr, $method:ident, $msg:expr) => {
        $s.devices
            .clone()
            .$method($a.call(&$s, $msg))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| device_status(e, &$guid))
    };
}

fn guid_ref(guid: &str) -> pb::DeviceRef {
    pb::DeviceRef {
        guid: guid.to_owned(),
    }
}

/// GET /amt/power/state/{guid}
pub async fn power_state(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = device_call!(s, a, guid, get_power_state, guid_ref(&guid))?;
    Ok(json(json!({"powerstate": r.power_state})))
}

fn action_field(body: &Value, allowed: &[u32], errors: &mut Vec<FieldError>) -> u32 {
    let v = body.get("action");
    match v
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
    {
        Some(n) if allowed.contains(&n) => n,
        _ => {
            errors.push(FieldError::new(
                "body",
                "action",
                if v.is_none() {
                    "Invalid value".to_owned()
                } else {
                    format!("action must be one of {allowed:?}")
                },
                v,
            ));
            0
        }
    }
}

const POWER_ACTIONS: [u32; 15] = [2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17];
const BOOT_ACTIONS: [u32; 11] = [100, 101, 104, 200, 201, 202, 203, 300, 301, 400, 401];

/// A device method's answer: its ReturnValue in MPS's shape; a non-zero one (an error from
/// mps-command) with the status `failed` (MPS: 200 for power and boot, 400 for user consent).
fn command_answer(
    result: Result<tonic::Response<pb::CommandResult>, tonic::Status>,
    guid: &str,
    failed: StatusCode,
) -> ApiResult {
    match result {
        Ok(r) => Ok(json(return_body(r.get_ref().return_value))),
        Err(e) => match return_value_of(&e) {
            Some(rv) => Ok(status_json(failed, return_body(rv))),
            None => Err(device_status(e, guid)),
        },
    }
}

/// POST /amt/power/action/{guid}
pub async fn power_action(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let mut errors = Vec::new();
    let action = action_field(&body, &POWER_ACTIONS, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let req = pb::PowerActionRequest {
        guid: guid.clone(),
        action,
    };
    let r = s.devices.clone().power_action(a.call(&s, req)).await;
    command_answer(r, &guid, StatusCode::OK)
}

/// POST /amt/power/bootOptions/{guid}
pub async fn boot_options(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let mut errors = Vec::new();
    let action = action_field(&body, &BOOT_ACTIONS, &mut errors);
    let use_sol = match body.get("useSOL") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        v => {
            errors.push(FieldError::new("body", "useSOL", "Invalid value", v));
            false
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let req = pb::BootOptionsRequest {
        guid: guid.clone(),
        action,
        use_sol,
    };
    let r = s.devices.clone().set_boot_options(a.call(&s, req)).await;
    command_answer(r, &guid, StatusCode::OK)
}

/// GET /amt/power/capabilities/{guid}
pub async fn power_capabilities(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = device_call!(s, a, guid, get_power_capabilities, guid_ref(&guid))?;
    let mut entries: Vec<(&String, &u32)> = r.actions.iter().collect();
    entries.sort_by_key(|(_, code)| **code);
    let map: Map<String, Value> = entries
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    Ok(json(Value::Object(map)))
}

/// GET /amt/version/{guid}
pub async fn version(State(s): State<AppState>, a: Authed, Path(guid): Path<String>) -> ApiResult {
    let r = device_call!(s, a, guid, get_version, guid_ref(&guid))?;
    let mut ids: Vec<(&String, &String)> = r.software_identity.iter().collect();
    ids.sort();
    let responses: Vec<Value> = ids
        .into_iter()
        .map(|(id, v)| json!({"InstanceID": id, "VersionString": v, "IsEntity": true}))
        .collect();
    let setup =
        json!({"ProvisioningMode": r.provisioning_mode, "ProvisioningState": r.provisioning_state});
    Ok(json(json!({
        "CIM_SoftwareIdentity": {"responses": responses, "status": 200},
        "AMT_SetupAndConfigurationService": {
            "response": setup,
            "responses": {"Header": {}, "Body": setup},
            "status": 200
        }
    })))
}

/// GET /amt/generalSettings/{guid}
pub async fn general_settings(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = device_call!(s, a, guid, get_general_settings, guid_ref(&guid))?;
    let mut props: Vec<(&String, &String)> = r.properties.iter().collect();
    props.sort();
    let body: Map<String, Value> = props
        .into_iter()
        .map(|(k, v)| (k.clone(), wsman_value(v)))
        .collect();
    Ok(json(json!({"Header": {}, "Body": body})))
}

/// xml2js-like typing of a WS-Man text value: numbers and booleans become JSON ones.
fn wsman_value(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => v
            .parse::<i64>()
            .ok()
            .filter(|_| !v.starts_with('0') || v == "0")
            .map(Value::from)
            .unwrap_or_else(|| Value::String(v.to_owned())),
    }
}

/// GET /amt/hardwareInfo/{guid}: the "2.x API compatible" shape, rebuilt from typed data.
pub async fn hardware_info(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = device_call!(s, a, guid, get_hardware_info, guid_ref(&guid))?;
    let board = r.board.unwrap_or_default();
    let bios = r.bios.unwrap_or_default();
    let one = |response: Value| json!({"response": response, "responses": [{"Header": {}, "Body": response}], "status": 200});
    let many = |items: Vec<Value>| json!({"responses": items, "status": 200});
    Ok(json(json!({
        "CIM_ComputerSystemPackage": one(json!({"PlatformGUID": r.platform_guid})),
        "CIM_SystemPackaging": many(vec![json!({"PlatformGUID": r.platform_guid})]),
        "CIM_Chassis": one(json!({"Manufacturer": r.manufacturer, "Model": r.model, "SerialNumber": r.serial_number})),
        "CIM_Chip": many(vec![]),
        "CIM_Card": one(json!({"Manufacturer": board.manufacturer, "Model": board.model, "SerialNumber": board.serial_number, "Version": board.version})),
        "CIM_BIOSElement": one(json!({"Manufacturer": bios.manufacturer, "Version": bios.version, "ReleaseDate": {"Datetime": bios.release_date}})),
        "CIM_Processor": many(r.processors.iter().map(|p| json!({
            "DeviceID": p.device_id, "ElementName": p.brand, "Family": p.family,
            "CurrentClockSpeed": p.current_clock_mhz, "MaxClockSpeed": p.max_clock_mhz,
        })).collect()),
        "CIM_PhysicalMemory": many(r.memory.iter().map(|m| json!({
            "BankLabel": m.bank_label, "Capacity": m.capacity_bytes, "Speed": m.speed_mhz,
            "Manufacturer": m.manufacturer, "PartNumber": m.part_number, "SerialNumber": m.serial_number,
        })).collect()),
        "CIM_MediaAccessDevice": many(r.storage.iter().map(|d| json!({
            "DeviceID": d.device_id, "ElementName": d.model, "SerialNumber": d.serial_number, "MaxMediaSize": d.max_media_size_kb,
        })).collect()),
        "CIM_PhysicalPackage": many(vec![json!({"Manufacturer": board.manufacturer, "Model": board.model, "SerialNumber": board.serial_number})]),
    })))
}

fn features_json(f: &pb::AmtFeatures) -> Value {
    json!({
        "userConsent": f.user_consent,
        "redirection": f.redirection,
        "KVM": f.kvm,
        "SOL": f.sol,
        "IDER": f.ider,
        "optInState": f.opt_in_state,
        "kvmAvailable": f.kvm_available,
    })
}

/// GET /amt/features/{guid}
pub async fn get_features(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = device_call!(s, a, guid, get_features, guid_ref(&guid))?;
    Ok(json(features_json(&r)))
}

/// MPS accepts the booleans as JSON booleans or as the strings "true"/"false".
fn loose_bool(body: &Value, k: &str, errors: &mut Vec<FieldError>) -> bool {
    match body.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        v => {
            errors.push(FieldError::new("body", k, "Invalid value", v));
            false
        }
    }
}

/// POST /amt/features/{guid}
pub async fn set_features(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let mut errors = Vec::new();
    let consent = match body.get("userConsent").and_then(Value::as_str) {
        Some(c) if ["kvm", "all", "none"].contains(&c.to_ascii_lowercase().as_str()) => {
            c.to_ascii_lowercase()
        }
        _ => {
            errors.push(FieldError::new(
                "body",
                "userConsent",
                "userConsent must be kvm, all or none",
                body.get("userConsent"),
            ));
            String::new()
        }
    };
    let sol = loose_bool(&body, "enableSOL", &mut errors);
    let ider = loose_bool(&body, "enableIDER", &mut errors);
    let kvm = loose_bool(&body, "enableKVM", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    device_call!(
        s,
        a,
        guid,
        set_features,
        pb::SetFeaturesRequest {
            guid: guid.clone(),
            user_consent: consent,
            enable_kvm: kvm,
            enable_sol: sol,
            enable_ider: ider,
        }
    )?;
    Ok(json(json!({"status": "AMT Features updated"})))
}

const SEVERITY: [(&str, u32); 7] = [
    ("unspecified", 0),
    ("monitor", 1),
    ("information", 2),
    ("ok", 4),
    ("non-critical", 8),
    ("critical", 16),
    ("non-recoverable", 32),
];

/// GET /amt/log/event/{guid}
pub async fn event_log(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = device_call!(
        s,
        a,
        guid,
        get_event_log,
        pb::GetEventLogRequest {
            guid: guid.clone(),
            max_records: 0
        }
    )?;
    let records: Vec<Value> = r
        .records
        .iter()
        .map(|e| {
            let severity = SEVERITY
                .iter()
                .find(|(n, _)| *n == e.severity)
                .map_or(0, |(_, v)| *v);
            json!({
                "DeviceAddress": 255,
                "EventSensorType": e.sensor_type,
                "EventType": e.event_type,
                "EventOffset": e.event_offset,
                "EventSourceType": e.event_source_type,
                "EventSeverity": severity,
                "SensorNumber": e.sensor_number,
                "Entity": 0,
                "EntityInstance": e.entity_instance,
                "EventData": e.event_data,
                "TimeStamp": iso(e.time),
                "EntityStr": e.entity,
                "Desc": e.description,
            })
        })
        .collect();
    Ok(json(Value::Array(records)))
}

/// GET /amt/log/audit/{guid}?startIndex=n
pub async fn audit_log(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let mut errors = Vec::new();
    let start = int_param(&pairs, "startIndex", 0, u64::from(u32::MAX), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let r = device_call!(
        s,
        a,
        guid,
        get_audit_log,
        pb::GetAuditLogRequest {
            guid: guid.clone(),
            start_index: u32::try_from(start.max(1)).unwrap_or(1),
        }
    )?;
    let mut records: Vec<Value> = r
        .records
        .iter()
        .map(|e| {
            json!({
                "AuditAppID": e.app_id,
                "EventID": e.event_id,
                "InitiatorType": e.initiator_type,
                "AuditApp": e.app_name,
                "Event": e.event_name,
                "Initiator": e.initiator,
                "Time": iso(e.time),
                "MCLocationType": 0,
                "NetAddress": e.net_address,
                "Ex": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &e.extended_data),
                "ExStr": Value::Null,
            })
        })
        .collect();
    // MPS returns the newest first.
    records.reverse();
    Ok(json(
        json!({"totalCnt": r.total_records, "records": records}),
    ))
}

/// ISO 8601 duration of whole minutes, as AMT writes alarm intervals.
fn interval(minutes: u32) -> String {
    let (d, h, m) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    let mut s = "P".to_owned();
    if d > 0 {
        s.push_str(&format!("{d}D"));
    }
    s.push('T');
    if h > 0 {
        s.push_str(&format!("{h}H"));
    }
    s.push_str(&format!("{m}M"));
    s
}

/// GET /amt/alarmOccurrences/{guid}
pub async fn alarms(State(s): State<AppState>, a: Authed, Path(guid): Path<String>) -> ApiResult {
    let r = device_call!(s, a, guid, list_alarms, guid_ref(&guid))?;
    let list: Vec<Value> = r
        .alarms
        .iter()
        .map(|al| {
            let mut o = json!({
                "ElementName": al.element_name,
                "InstanceID": al.instance_id,
                "StartTime": {"Datetime": iso(al.start_time)},
                "DeleteOnCompletion": al.delete_on_completion,
                "InternalInMinutes": al.interval_minutes,
            });
            if al.interval_minutes > 0 {
                o["Interval"] = json!({"Interval": interval(al.interval_minutes)});
            }
            o
        })
        .collect();
    Ok(json(Value::Array(list)))
}

/// POST /amt/alarmOccurrences/{guid}
pub async fn add_alarm(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let mut errors = Vec::new();
    let name = match body.get("ElementName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => {
            errors.push(FieldError::new(
                "body",
                "ElementName",
                "Invalid value",
                body.get("ElementName"),
            ));
            String::new()
        }
    };
    let start = match body
        .get("StartTime")
        .and_then(Value::as_str)
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        Some(Ok(t)) => t.timestamp(),
        _ => {
            errors.push(FieldError::new(
                "body",
                "StartTime",
                "Invalid value",
                body.get("StartTime"),
            ));
            0
        }
    };
    let minutes = match body.get("Interval") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => n,
            None => {
                errors.push(FieldError::new(
                    "body",
                    "Interval",
                    "Interval must be a number of minutes",
                    Some(v),
                ));
                0
            }
        },
    };
    let delete = match body.get("DeleteOnCompletion") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        v => {
            errors.push(FieldError::new(
                "body",
                "DeleteOnCompletion",
                "Invalid value",
                v,
            ));
            true
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let instance = body
        .get("InstanceID")
        .and_then(Value::as_str)
        .unwrap_or(&name)
        .to_owned();
    match s
        .devices
        .clone()
        .add_alarm(a.call(
            &s,
            pb::AddAlarmRequest {
                guid: guid.clone(),
                name: instance,
                start_time: start,
                interval_minutes: minutes,
                delete_on_completion: delete,
            },
        ))
        .await
    {
        Ok(_) => Ok(json(json!({"status": "SUCCESS", "ReturnValue": 0}))),
        Err(e)
            if matches!(
                e.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            ) =>
        {
            let quota = e.message().contains("Quota");
            Err(ApiError::BadRequest(if quota {
                format!("Alarm add request quota exceeded for guid : {guid}.")
            } else {
                format!(
                    "Alarm add request had invalid parameters for guid : {guid}: {}",
                    e.message()
                )
            }))
        }
        Err(e) => Err(device_status(e, &guid)),
    }
}

/// DELETE /amt/alarmOccurrences/{guid}
pub async fn delete_alarm(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let Some(name) = body
        .get("Name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Err(ApiError::Validation(vec![FieldError::new(
            "body",
            "Name",
            "Invalid value",
            body.get("Name"),
        )]));
    };
    match s
        .devices
        .clone()
        .delete_alarm(a.call(&s, pb::DeleteAlarmRequest { guid: guid.clone(), instance_id: name.to_owned() }))
        .await
    {
        Ok(_) => Ok(json(json!({"status": "SUCCESS"}))),
        // mps-command names the alarm when the device has none of that name.
        Err(e) if e.code() == tonic::Code::NotFound && e.message().contains("alarm") => Ok((
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "Alarm instance not found", "errorDescription": format!("Alarm instance {name} not found for guid : {guid}")})),
        )
            .into_response()),
        Err(e) => Err(device_status(e, &guid)),
    }
}

/// GET /amt/userConsentCode/{guid}
pub async fn start_consent(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = s
        .devices
        .clone()
        .start_user_consent(a.call(&s, guid_ref(&guid)))
        .await;
    command_answer(r, &guid, StatusCode::BAD_REQUEST)
}

/// GET /amt/userConsentCode/cancel/{guid}
pub async fn cancel_consent(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    let r = s
        .devices
        .clone()
        .cancel_user_consent(a.call(&s, guid_ref(&guid)))
        .await;
    command_answer(r, &guid, StatusCode::BAD_REQUEST)
}

/// POST /amt/userConsentCode/{guid}
pub async fn send_consent(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let code = match body.get("consentCode") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(c)) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => {
            c.clone()
        }
        v => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "body",
                "consentCode",
                "Invalid value",
                v,
            )]))
        }
    };
    let req = pb::SendUserConsentCodeRequest {
        guid: guid.clone(),
        code,
    };
    let r = s
        .devices
        .clone()
        .send_user_consent_code(a.call(&s, req))
        .await;
    command_answer(r, &guid, StatusCode::BAD_REQUEST)
}

/// DELETE /amt/deactivate/{guid}
pub async fn deactivate(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    match s
        .devices
        .clone()
        .deactivate(a.call(&s, guid_ref(&guid)))
        .await
    {
        Ok(_) => Ok(json(json!({"status": "SUCCESS"}))),
        Err(e) => match return_value_of(&e) {
            Some(rv) => Ok(json(json!({"ReturnValue": rv}))),
            None => Err(device_status(e, &guid)),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn guids_alarm_intervals_and_return_values() {
        assert!(is_uuid("5f6a0f2e-3b1c-4d2a-9e8f-0123456789AB"));
        assert!(!is_uuid("5f6a0f2e-3b1c-4d2a-9e8f-0123456789A"));
        assert!(!is_uuid("5f6a0f2e+3b1c-4d2a-9e8f-0123456789ab"));
        assert!(!is_uuid("1"));
        assert_eq!(interval(1440), "P1DT0M");
        assert_eq!(interval(90), "PT1H30M");
        assert_eq!(interval(5), "PT5M");
        let failed =
            tonic::Status::failed_precondition("RequestPowerStateChange returned 2 (not ready)");
        assert_eq!(return_value_of(&failed), Some(2));
        assert_eq!(
            return_value_of(&tonic::Status::failed_precondition("WS-Man fault")),
            None
        );
        assert_eq!(
            return_value_of(&tonic::Status::not_found("returned 2 (x)")),
            None
        );
        assert_eq!(return_body(2)["Body"]["ReturnValueStr"], "NOT_READY");
        assert_eq!(return_body(77)["Body"]["ReturnValueStr"], "UNKNOWN_ERROR");
        assert_eq!(wsman_value("true"), Value::Bool(true));
        assert_eq!(wsman_value("42"), json!(42));
        assert_eq!(wsman_value("007"), json!("007"));
        assert_eq!(wsman_value("host"), json!("host"));
    }
}
