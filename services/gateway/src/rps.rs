//! The RPS admin routes (`/api/v1/admin/...`): profiles, CIRA configs, domains and wireless
//! configs in the reference's JSON, over rps's ProvisioningAdmin gRPC API.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use homeport_proto::provisioning::v1 as pb;
use serde_json::{json, Value};

use crate::error::{service_status, ApiError, ApiResult, FieldError};
use crate::{header_str, json, query_pairs, status_json, AppState, Authed, JsonBody};

/// Largest `$top` of a listing (the admin API's page limit).
const MAX_TOP: u64 = 1000;

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn n(v: &Value, k: &str) -> u32 {
    v.get(k)
        .and_then(|x| {
            x.as_u64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|x| u32::try_from(x).ok())
        .unwrap_or(0)
}

/// RPS's version is a string (PostgreSQL's xmin); Homeport's a number. Both are accepted.
fn version(v: &Value, headers: &HeaderMap) -> i64 {
    header_str(headers, "if-match")
        .map(|h| {
            h.trim_matches('"')
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_owned()
        })
        .and_then(|h| h.parse().ok())
        .or_else(|| {
            v.get("version").and_then(|x| {
                x.as_i64()
                    .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
            })
        })
        .unwrap_or(0)
}

/// Fields this implementation does not configure are refused, not silently dropped.
fn unsupported(v: &Value, fields: &[(&str, &str)], errors: &mut Vec<FieldError>) {
    for (k, why) in fields {
        match v.get(*k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            x => errors.push(FieldError::new("body", k, *why, x)),
        }
    }
}

fn type_checks(v: &Value, strings: &[&str], bools: &[&str], errors: &mut Vec<FieldError>) {
    if !v.is_object() {
        errors.push(FieldError::new(
            "body",
            "",
            "the body must be a JSON object",
            None,
        ));
        return;
    }
    for k in strings {
        if let Some(x) = v.get(*k).filter(|x| !x.is_null() && !x.is_string()) {
            errors.push(FieldError::new(
                "body",
                k,
                format!("{k} must be a string"),
                Some(x),
            ));
        }
    }
    for k in bools {
        if let Some(x) = v.get(*k).filter(|x| !x.is_null() && !x.is_boolean()) {
            errors.push(FieldError::new(
                "body",
                k,
                format!("{k} must be a boolean"),
                Some(x),
            ));
        }
    }
}

// ---- profiles ----

fn profile_from(v: &Value, errors: &mut Vec<FieldError>) -> pb::Profile {
    type_checks(
        v,
        &[
            "profileName",
            "activation",
            "amtPassword",
            "mebxPassword",
            "ciraConfigName",
            "userConsent",
        ],
        &[
            "generateRandomPassword",
            "generateRandomMEBxPassword",
            "dhcpEnabled",
            "ipSyncEnabled",
            "localWifiSyncEnabled",
            "iderEnabled",
            "kvmEnabled",
            "solEnabled",
        ],
        errors,
    );
    unsupported(
        v,
        &[
            (
                "tlsMode",
                "TLS profiles are not supported by Homeport's rps; devices are managed over CIRA",
            ),
            (
                "ieee8021xProfileName",
                "IEEE 802.1x profiles are not supported by Homeport's rps",
            ),
        ],
        errors,
    );
    let activation = match s(v, "activation").as_str() {
        "ccmactivate" => pb::Activation::Ccm,
        "acmactivate" => pb::Activation::Acm,
        "" => pb::Activation::Unspecified,
        _ => {
            errors.push(FieldError::new(
                "body",
                "activation",
                "activation must be ccmactivate or acmactivate",
                v.get("activation"),
            ));
            pb::Activation::Unspecified
        }
    };
    let consent = match s(v, "userConsent").to_ascii_lowercase().as_str() {
        "none" => pb::UserConsent::None,
        "kvm" => pb::UserConsent::Kvm,
        "all" => pb::UserConsent::All,
        _ => pb::UserConsent::Unspecified,
    };
    let wifi = v
        .get("wifiConfigs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|w| pb::WifiLink {
                    profile_name: s(w, "profileName"),
                    priority: n(w, "priority"),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::Profile {
        name: s(v, "profileName"),
        activation: activation as i32,
        amt_password: s(v, "amtPassword"),
        generate_random_password: b(v, "generateRandomPassword"),
        mebx_password: s(v, "mebxPassword"),
        generate_random_mebx_password: b(v, "generateRandomMEBxPassword"),
        cira_config_name: s(v, "ciraConfigName"),
        tags: tags(v),
        dhcp_enabled: b(v, "dhcpEnabled"),
        ip_sync_enabled: b(v, "ipSyncEnabled"),
        user_consent: consent as i32,
        ider_enabled: b(v, "iderEnabled"),
        kvm_enabled: v.get("kvmEnabled").and_then(Value::as_bool).unwrap_or(true),
        sol_enabled: b(v, "solEnabled"),
        wifi_configs: wifi,
        local_wifi_sync_enabled: b(v, "localWifiSyncEnabled"),
        tenant: String::new(),
        version: 0,
    }
}

fn tags(v: &Value) -> Vec<String> {
    v.get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn profile_json(p: &pb::Profile) -> Value {
    let activation = match pb::Activation::try_from(p.activation) {
        Ok(pb::Activation::Acm) => "acmactivate",
        _ => "ccmactivate",
    };
    let consent = match pb::UserConsent::try_from(p.user_consent) {
        Ok(pb::UserConsent::None) => "None",
        Ok(pb::UserConsent::Kvm) => "KVM",
        _ => "All",
    };
    json!({
        "profileName": p.name,
        "activation": activation,
        "generateRandomPassword": p.generate_random_password,
        "generateRandomMEBxPassword": p.generate_random_mebx_password,
        "ciraConfigName": if p.cira_config_name.is_empty() { Value::Null } else { json!(p.cira_config_name) },
        "tags": p.tags,
        "dhcpEnabled": p.dhcp_enabled,
        "ipSyncEnabled": p.ip_sync_enabled,
        "localWifiSyncEnabled": p.local_wifi_sync_enabled,
        "wifiConfigs": p.wifi_configs.iter().map(|w| json!({"profileName": w.profile_name, "priority": w.priority})).collect::<Vec<_>>(),
        "userConsent": consent,
        "iderEnabled": p.ider_enabled,
        "kvmEnabled": p.kvm_enabled,
        "solEnabled": p.sol_enabled,
        "tlsMode": Value::Null,
        "tlsSigningAuthority": Value::Null,
        "ieee8021xProfileName": Value::Null,
        "tenantId": p.tenant,
        "version": p.version.to_string(),
    })
}

// ---- CIRA configs ----

fn cira_from(v: &Value, errors: &mut Vec<FieldError>) -> pb::CiraConfig {
    type_checks(
        v,
        &[
            "configName",
            "mpsServerAddress",
            "username",
            "password",
            "commonName",
            "mpsRootCertificate",
            "proxyDetails",
        ],
        &[],
        errors,
    );
    pb::CiraConfig {
        name: s(v, "configName"),
        mps_server_address: s(v, "mpsServerAddress"),
        server_address_format: n(v, "serverAddressFormat"),
        mps_port: n(v, "mpsPort"),
        username: s(v, "username"),
        password: s(v, "password"),
        common_name: s(v, "commonName"),
        auth_method: n(v, "authMethod"),
        mps_root_certificate: s(v, "mpsRootCertificate"),
        proxy_details: s(v, "proxyDetails"),
        tenant: String::new(),
        version: 0,
    }
}

fn cira_json(c: &pb::CiraConfig) -> Value {
    json!({
        "configName": c.name,
        "mpsServerAddress": c.mps_server_address,
        "serverAddressFormat": c.server_address_format,
        "mpsPort": c.mps_port,
        "username": c.username,
        "commonName": c.common_name,
        "authMethod": c.auth_method,
        "mpsRootCertificate": c.mps_root_certificate,
        "proxyDetails": c.proxy_details,
        "tenantId": c.tenant,
        "version": c.version.to_string(),
    })
}

// ---- domains ----

fn domain_from(v: &Value, errors: &mut Vec<FieldError>) -> pb::Domain {
    type_checks(
        v,
        &[
            "profileName",
            "domainSuffix",
            "provisioningCert",
            "provisioningCertStorageFormat",
            "provisioningCertPassword",
        ],
        &[],
        errors,
    );
    pb::Domain {
        name: s(v, "profileName"),
        domain_suffix: s(v, "domainSuffix"),
        provisioning_cert: s(v, "provisioningCert"),
        provisioning_cert_storage_format: s(v, "provisioningCertStorageFormat"),
        provisioning_cert_password: s(v, "provisioningCertPassword"),
        expiration_date: 0,
        tenant: String::new(),
        version: 0,
    }
}

fn domain_json(d: &pb::Domain) -> Value {
    json!({
        "profileName": d.name,
        "domainSuffix": d.domain_suffix,
        "provisioningCertStorageFormat": d.provisioning_cert_storage_format,
        "expirationDate": chrono::DateTime::from_timestamp(d.expiration_date, 0).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "tenantId": d.tenant,
        "version": d.version.to_string(),
    })
}

// ---- wireless configs ----

fn wireless_from(v: &Value, errors: &mut Vec<FieldError>) -> pb::WirelessConfig {
    type_checks(
        v,
        &[
            "profileName",
            "ssid",
            "pskPassphrase",
            "ieee8021xProfileName",
        ],
        &[],
        errors,
    );
    pb::WirelessConfig {
        name: s(v, "profileName"),
        authentication_method: n(v, "authenticationMethod"),
        encryption_method: n(v, "encryptionMethod"),
        ssid: s(v, "ssid"),
        psk_passphrase: s(v, "pskPassphrase"),
        link_policy: v
            .get("linkPolicy")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|x| u32::try_from(x).ok())
                    .collect()
            })
            .unwrap_or_default(),
        ieee8021x_profile_name: s(v, "ieee8021xProfileName"),
        tenant: String::new(),
        version: 0,
    }
}

fn wireless_json(w: &pb::WirelessConfig) -> Value {
    json!({
        "profileName": w.name,
        "authenticationMethod": w.authentication_method,
        "encryptionMethod": w.encryption_method,
        "ssid": w.ssid,
        "linkPolicy": w.link_policy,
        "ieee8021xProfileName": if w.ieee8021x_profile_name.is_empty() { Value::Null } else { json!(w.ieee8021x_profile_name) },
        "tenantId": w.tenant,
        "version": w.version.to_string(),
    })
}

/// The JSON name of a field the admin API names in snake case.
fn json_field(proto: &str, name_key: &str) -> String {
    match proto {
        "name" => name_key.to_owned(),
        "generate_random_mebx_password" => "generateRandomMEBxPassword".into(),
        "ieee8021x_profile_name" => "ieee8021xProfileName".into(),
        other => camel(other),
    }
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// How a failed admin call answers, in RPS's shapes. `what` is e.g. "AMT profile", `name`
/// the object's name, `name_key` the JSON name of its name field.
fn admin_error(e: tonic::Status, what: &str, name: &str, name_key: &str) -> ApiError {
    use tonic::Code;
    let m = e.message().to_owned();
    match e.code() {
        Code::InvalidArgument => {
            let (path, msg) = match m.split_once(": ") {
                Some((f, rule))
                    if f.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.') =>
                {
                    let f = f.split('.').next().unwrap_or(f);
                    (
                        json_field(f, name_key),
                        format!("{}: {rule}", json_field(f, name_key)),
                    )
                }
                _ => (String::new(), m.clone()),
            };
            ApiError::Validation(vec![FieldError::new("body", &path, msg, None)])
        }
        Code::NotFound => ApiError::RpsNotFound(format!("{what} {name} Not Found")),
        Code::AlreadyExists => ApiError::RpsError("Unique key violation", m),
        Code::FailedPrecondition => ApiError::RpsError("Foreign key violation", m),
        Code::Aborted => ApiError::Conflict(m),
        _ => service_status(e),
    }
}

fn list_params(q: Option<&str>) -> ApiResult<(u32, u32, bool)> {
    let pairs = query_pairs(q);
    let mut errors = Vec::new();
    let mut get = |k: &str, default: u64| match pairs.iter().rev().find(|(n, _)| n == k) {
        None => default,
        Some((_, v)) => match v.parse::<u64>() {
            Ok(x) if x <= MAX_TOP || k == "$skip" => x,
            _ => {
                errors.push(FieldError::new(
                    "query",
                    k,
                    format!("{k} must be an integer between 0 and {MAX_TOP}"),
                    Some(&json!(v)),
                ));
                default
            }
        },
    };
    let top = get("$top", 25);
    let skip = get("$skip", 0);
    let count = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "$count")
        .is_some_and(|(_, v)| v == "true" || v == "1");
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok((
        u32::try_from(skip).unwrap_or(u32::MAX),
        u32::try_from(top).unwrap_or(25),
        count,
    ))
}

fn listing(items: Vec<Value>, total: u64, count: bool) -> axum::response::Response {
    if count {
        json(json!({"data": items, "totalCount": total}))
    } else {
        json(Value::Array(items))
    }
}

/// The five routes of one kind of configuration.
macro_rules! admin_resource {
    ($list:ident, $get:ident, $create:ident, $update:ident, $delete:ident,
     what = $what:expr, name_key = $name_key:expr, version_required = $version_required:expr,
     from = $from:ident, to = $to:ident,
     rpc = ($rlist:ident, $rget:ident, $rcreate:ident, $rupdate:ident, $rdelete:ident),
     items = $items:ident) => {
        pub async fn $list(
            State(s): State<AppState>,
            a: Authed,
            RawQuery(q): RawQuery,
        ) -> ApiResult {
            let (skip, top, count) = list_params(q.as_deref())?;
            if top == 0 && !count {
                return Ok(listing(Vec::new(), 0, count));
            }
            let r = s
                .admin
                .clone()
                .$rlist(a.call(
                    &s,
                    pb::ListRequest {
                        skip,
                        top: top.max(1),
                    },
                ))
                .await
                .map_err(|e| admin_error(e, $what, "", $name_key))?
                .into_inner();
            let items = if top == 0 {
                Vec::new()
            } else {
                r.$items.iter().map($to).collect()
            };
            Ok(listing(items, r.total, count))
        }

        pub async fn $get(
            State(s): State<AppState>,
            a: Authed,
            Path(name): Path<String>,
        ) -> ApiResult {
            let r = s
                .admin
                .clone()
                .$rget(a.call(&s, pb::NameRef { name: name.clone() }))
                .await
                .map_err(|e| admin_error(e, $what, &name, $name_key))?
                .into_inner();
            Ok(json($to(&r)))
        }

        pub async fn $create(
            State(s): State<AppState>,
            a: Authed,
            JsonBody(body): JsonBody,
        ) -> ApiResult {
            let mut errors = Vec::new();
            let msg = $from(&body, &mut errors);
            if !errors.is_empty() {
                return Err(ApiError::Validation(errors));
            }
            let name = msg.name.clone();
            let r = s
                .admin
                .clone()
                .$rcreate(a.call(&s, msg))
                .await
                .map_err(|e| admin_error(e, $what, &name, $name_key))?
                .into_inner();
            Ok(status_json(StatusCode::CREATED, $to(&r)))
        }

        /// PATCH: the stored object with the body's fields over it (secrets are write-only,
        /// so a static one must be sent again when it is kept).
        pub async fn $update(
            State(s): State<AppState>,
            a: Authed,
            headers: HeaderMap,
            JsonBody(body): JsonBody,
        ) -> ApiResult {
            let name = s_of(&body, $name_key);
            if name.is_empty() {
                return Err(ApiError::Validation(vec![FieldError::new(
                    "body",
                    $name_key,
                    "Invalid value",
                    body.get($name_key),
                )]));
            }
            let current = s
                .admin
                .clone()
                .$rget(a.call(&s, pb::NameRef { name: name.clone() }))
                .await
                .map_err(|e| admin_error(e, $what, &name, $name_key))?
                .into_inner();
            let mut merged = $to(&current);
            if let (Some(m), Some(b)) = (merged.as_object_mut(), body.as_object()) {
                // A static secret in the body replaces a stored "generate a random one" and
                // the other way round; the merge must not end up with both.
                for (secret, random) in SECRET_PAIRS {
                    if b.contains_key(*secret) && !b.contains_key(*random) {
                        m.remove(*random);
                    }
                }
                for (k, v) in b {
                    m.insert(k.clone(), v.clone());
                }
            }
            let mut errors = Vec::new();
            let mut msg = $from(&merged, &mut errors);
            let sent = version(&body, &headers);
            if sent == 0 && $version_required {
                errors.push(FieldError::new(
                    "body",
                    "version",
                    "version is required (the version read, or an If-Match header)",
                    None,
                ));
            }
            if !errors.is_empty() {
                return Err(ApiError::Validation(errors));
            }
            msg.version = if sent == 0 { current.version } else { sent };
            match s.admin.clone().$rupdate(a.call(&s, msg)).await {
                Ok(r) => Ok(json($to(&r.into_inner()))),
                // A stale version: RPS answers with the current object and its ETag, 412 when
                // the version came as If-Match, 409 otherwise.
                Err(e) if e.code() == tonic::Code::Aborted => {
                    let now = s
                        .admin
                        .clone()
                        .$rget(a.call(&s, pb::NameRef { name: name.clone() }))
                        .await
                        .map_err(|e| admin_error(e, $what, &name, $name_key))?
                        .into_inner();
                    let status = if headers.contains_key("if-match") {
                        StatusCode::PRECONDITION_FAILED
                    } else {
                        StatusCode::CONFLICT
                    };
                    let mut r = status_json(status, $to(&now));
                    if let Ok(etag) = format!("\"{}\"", now.version).parse() {
                        r.headers_mut().insert(axum::http::header::ETAG, etag);
                    }
                    Ok(r)
                }
                Err(e) => Err(admin_error(e, $what, &name, $name_key)),
            }
        }

        pub async fn $delete(
            State(s): State<AppState>,
            a: Authed,
            Path(name): Path<String>,
        ) -> ApiResult {
            s.admin
                .clone()
                .$rdelete(a.call(&s, pb::NameRef { name: name.clone() }))
                .await
                .map_err(|e| admin_error(e, $what, &name, $name_key))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    };
}

/// Write-only secrets and the flag that generates them instead.
const SECRET_PAIRS: &[(&str, &str)] = &[
    ("amtPassword", "generateRandomPassword"),
    ("mebxPassword", "generateRandomMEBxPassword"),
];

fn s_of(v: &Value, k: &str) -> String {
    s(v, k)
}

admin_resource!(
    list_profiles,
    get_profile,
    create_profile,
    update_profile,
    delete_profile,
    what = "AMT profile",
    name_key = "profileName",
    version_required = true,
    from = profile_from,
    to = profile_json,
    rpc = (
        list_profiles,
        get_profile,
        create_profile,
        update_profile,
        delete_profile
    ),
    items = profiles
);
admin_resource!(
    list_cira,
    get_cira,
    create_cira,
    update_cira,
    delete_cira,
    what = "CIRA profile",
    name_key = "configName",
    version_required = false,
    from = cira_from,
    to = cira_json,
    rpc = (
        list_cira_configs,
        get_cira_config,
        create_cira_config,
        update_cira_config,
        delete_cira_config
    ),
    items = cira_configs
);
admin_resource!(
    list_domains,
    get_domain,
    create_domain,
    update_domain,
    delete_domain,
    what = "Domain profile",
    name_key = "profileName",
    version_required = false,
    from = domain_from,
    to = domain_json,
    rpc = (
        list_domains,
        get_domain,
        create_domain,
        update_domain,
        delete_domain
    ),
    items = domains
);
admin_resource!(
    list_wireless,
    get_wireless,
    create_wireless,
    update_wireless,
    delete_wireless,
    what = "Wireless profile",
    name_key = "profileName",
    version_required = true,
    from = wireless_from,
    to = wireless_json,
    rpc = (
        list_wireless_configs,
        get_wireless_config,
        create_wireless_config,
        update_wireless_config,
        delete_wireless_config
    ),
    items = wireless_configs
);

/// GET /admin
pub async fn admin_root() -> ApiResult {
    Ok(json(json!({"message": "admin path. use admin/profiles"})))
}
