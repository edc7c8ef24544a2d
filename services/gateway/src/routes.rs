//! Every route, with its documentation beside its handler: the router and the OpenAPI
//! document are both built from this one table, so neither can list a route the other lacks.

use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;

use crate::{events, mps, rps, AppState};

/// What the OpenAPI document says about a route.
pub struct Doc {
    pub method: &'static str,
    /// Below the API base (`/api/v1`), axum's `{param}` syntax, which OpenAPI shares.
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// Schema name of the JSON body, if it takes one.
    pub body: Option<&'static str>,
    /// Success status and the schema name of its body ("" for none).
    pub ok: (u16, &'static str),
    /// Whether it needs a bearer token.
    pub auth: bool,
}

const fn doc(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    ok: (u16, &'static str),
) -> Doc {
    Doc {
        method,
        path,
        tag,
        summary,
        body,
        ok,
        auth: true,
    }
}

pub type Entry = (Doc, MethodRouter<AppState>);

/// The API below `/api/v1`.
pub fn table() -> Vec<Entry> {
    const D: &str = "devices";
    const A: &str = "amt";
    const P: &str = "provisioning";
    const E: &str = "events";
    let mut t: Vec<Entry> = vec![
        (Doc { auth: false, ..doc("post", "/authorize", "auth", "Sign in: a bearer token for the admin user", Some("Credentials"), (200, "Token")) }, post(crate::auth_routes::authorize)),
        (doc("get", "/authorize/redirection/{guid}", "auth", "A short-lived token naming one device (the relay's; Homeport has no relay)", None, (200, "Token")), get(crate::auth_routes::redirection)),
        (Doc { auth: false, ..doc("get", "/version", "service", "Service version", None, (200, "Version")) }, get(crate::auth_routes::version)),
        (Doc { auth: false, ..doc("get", "/health", "service", "Health of the gateway and the services behind it", None, (200, "Health")) }, get(crate::auth_routes::health)),
        (Doc { auth: false, ..doc("get", "/openapi.json", "service", "This document", None, (200, "")) }, get(crate::openapi::serve)),
        (doc("get", "/ciracert", "service", "The CIRA ingress's root certificate (PEM) that devices trust", None, (200, "")), get(crate::auth_routes::cira_cert)),
        (doc("get", "/devices", D, "List devices ($top, $skip, $count, hostname, friendlyName, tags, method, status, search)", None, (200, "DeviceList")), get(mps::list_devices)),
        (doc("post", "/devices", D, "Register a device, or update the caller's device of that guid", Some("DeviceBody"), (201, "Device")), post(mps::create_device)),
        (doc("patch", "/devices", D, "Update a device's host name, friendly name or tags", Some("DeviceBody"), (200, "Device")), patch(mps::update_device)),
        (doc("get", "/devices/stats", D, "Devices in total, connected and disconnected, and connected per ingress node", None, (200, "Stats")), get(mps::stats)),
        (doc("get", "/devices/tags", D, "The distinct tags of the tenant's devices", None, (200, "Strings")), get(mps::tags)),
        (doc("get", "/devices/{guid}", D, "One device, with its connection history", None, (200, "Device")), get(mps::get_device)),
        (doc("delete", "/devices/{guid}", D, "Remove a device from the registry and its secrets from the secret store", None, (204, "")), delete(mps::delete_device)),
        (doc("get", "/devices/redirectstatus/{guid}", D, "Redirection sessions of a connected device", None, (200, "RedirectStatus")), get(mps::redirect_status)),
        (doc("delete", "/devices/refresh/{guid}", D, "Refresh a connected device's credentials", None, (200, "Success")), delete(mps::refresh)),
        (doc("delete", "/devices/disconnect/{guid}", D, "End a connected device's CIRA session (it reconnects by itself)", None, (200, "Success")), delete(mps::disconnect)),
        (doc("get", "/amt/power/state/{guid}", A, "Power state", None, (200, "PowerState")), get(mps::power_state)),
        (doc("post", "/amt/power/action/{guid}", A, "Power action (2 on, 5 cycle, 8 off, 10 reset, ...)", Some("Action"), (200, "ReturnValue")), post(mps::power_action)),
        (doc("post", "/amt/power/bootOptions/{guid}", A, "Boot to BIOS, PXE, IDE-R or diagnostics, then power on or reset", Some("BootAction"), (200, "ReturnValue")), post(mps::boot_options)),
        (doc("get", "/amt/power/capabilities/{guid}", A, "Power and boot actions the device supports", None, (200, "Capabilities")), get(mps::power_capabilities)),
        (doc("get", "/amt/version/{guid}", A, "AMT version and provisioning state", None, (200, "Object")), get(mps::version)),
        (doc("get", "/amt/generalSettings/{guid}", A, "AMT_GeneralSettings", None, (200, "Object")), get(mps::general_settings)),
        (doc("get", "/amt/hardwareInfo/{guid}", A, "Hardware inventory", None, (200, "Object")), get(mps::hardware_info)),
        (doc("get", "/amt/features/{guid}", A, "Redirection features and user consent", None, (200, "Features")), get(mps::get_features)),
        (doc("post", "/amt/features/{guid}", A, "Set redirection features and user consent", Some("FeaturesBody"), (200, "Status")), post(mps::set_features)),
        (doc("get", "/amt/log/event/{guid}", A, "AMT event log, newest first", None, (200, "Objects")), get(mps::event_log)),
        (doc("get", "/amt/log/audit/{guid}", A, "AMT audit log (startIndex)", None, (200, "Object")), get(mps::audit_log)),
        (doc("get", "/amt/alarmOccurrences/{guid}", A, "Alarm clock occurrences", None, (200, "Objects")), get(mps::alarms)),
        (doc("post", "/amt/alarmOccurrences/{guid}", A, "Add an alarm", Some("Alarm"), (200, "Status")), post(mps::add_alarm)),
        (doc("delete", "/amt/alarmOccurrences/{guid}", A, "Delete an alarm (body: Name)", Some("AlarmName"), (200, "Status")), delete(mps::delete_alarm)),
        (doc("get", "/amt/userConsentCode/{guid}", A, "Start user consent (shows a code on the device's screen)", None, (200, "ReturnValue")), get(mps::start_consent)),
        (doc("post", "/amt/userConsentCode/{guid}", A, "Send the user consent code", Some("ConsentCode"), (200, "ReturnValue")), post(mps::send_consent)),
        (doc("get", "/amt/userConsentCode/cancel/{guid}", A, "Cancel user consent", None, (200, "ReturnValue")), get(mps::cancel_consent)),
        (doc("delete", "/amt/deactivate/{guid}", A, "Unprovision AMT and remove the device", None, (200, "Status")), delete(mps::deactivate)),
        (doc("get", "/events", E, "Stored events (device, kind, from, to, $top, order, after/before)", None, (200, "EventPage")), get(events::list)),
        (doc("get", "/events/counts", E, "Events per minute of some kinds (kinds, minutes)", None, (200, "EventCounts")), get(events::counts)),
        (doc("get", "/events/stream", E, "Live events as Server-Sent Events, resumable with Last-Event-ID", None, (200, "")), get(events::stream)),
        (doc("get", "/events/ws", E, "Live events over a WebSocket (token in Authorization or as the subprotocol), resumable with ?after=", None, (101, "")), get(events::websocket)),
        (doc("get", "/admin", P, "RPS admin root", None, (200, "Object")), get(rps::admin_root)),
    ];
    macro_rules! admin {
        ($path:literal, $one:literal, $name:literal, $schema:literal, $list:path, $get:path, $create:path, $update:path, $delete:path) => {
            t.push((
                doc(
                    "get",
                    concat!("/admin/", $path),
                    P,
                    concat!("List ", $one, "s ($top, $skip, $count)"),
                    None,
                    (200, "Objects"),
                ),
                get($list),
            ));
            t.push((
                doc(
                    "post",
                    concat!("/admin/", $path),
                    P,
                    concat!("Create a ", $one),
                    Some($schema),
                    (201, $schema),
                ),
                post($create),
            ));
            t.push((
                doc(
                    "patch",
                    concat!("/admin/", $path),
                    P,
                    concat!("Update a ", $one, " (with its version)"),
                    Some($schema),
                    (200, $schema),
                ),
                patch($update),
            ));
            t.push((
                doc(
                    "get",
                    concat!("/admin/", $path, "/{", $name, "}"),
                    P,
                    concat!("One ", $one),
                    None,
                    (200, $schema),
                ),
                get($get),
            ));
            t.push((
                doc(
                    "delete",
                    concat!("/admin/", $path, "/{", $name, "}"),
                    P,
                    concat!("Delete a ", $one),
                    None,
                    (204, ""),
                ),
                delete($delete),
            ));
        };
    }
    admin!(
        "profiles",
        "profile",
        "profileName",
        "Profile",
        rps::list_profiles,
        rps::get_profile,
        rps::create_profile,
        rps::update_profile,
        rps::delete_profile
    );
    admin!(
        "ciraconfigs",
        "CIRA config",
        "ciraConfigName",
        "CiraConfig",
        rps::list_cira,
        rps::get_cira,
        rps::create_cira,
        rps::update_cira,
        rps::delete_cira
    );
    admin!(
        "domains",
        "domain",
        "domainName",
        "Domain",
        rps::list_domains,
        rps::get_domain,
        rps::create_domain,
        rps::update_domain,
        rps::delete_domain
    );
    admin!(
        "wirelessconfigs",
        "wireless config",
        "profileName",
        "WirelessConfig",
        rps::list_wireless,
        rps::get_wireless,
        rps::create_wireless,
        rps::update_wireless,
        rps::delete_wireless
    );
    t
}

/// Where the API is mounted: the bare base and Kong's prefixes of the reference deployment,
/// so a client configured for Kong only changes the host name.
pub const BASES: [&str; 4] = ["/api/v1", "/mps/api/v1", "/mps/login/api/v1", "/rps/api/v1"];

pub fn router(state: AppState) -> Router {
    let mut api: Router<AppState> = Router::new();
    for (d, handler) in table() {
        api = api.route(d.path, handler);
    }
    // A known path with another method is answered like an unknown path, as MPS does.
    let api = api.method_not_allowed_fallback(crate::assets::not_found);
    let mut app: Router<AppState> = Router::new();
    for base in BASES {
        app = app.nest(base, api.clone());
    }
    app.route("/", get(crate::assets::index))
        .route("/assets/{file}", get(crate::assets::file))
        .fallback(crate::assets::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe,
        ))
        .layer(axum::middleware::from_fn(crate::cors))
        .with_state(state)
}

/// The static words of every route (`amt`, `bootOptions`, ...), by their lower case.
fn words() -> &'static std::collections::HashMap<String, &'static str> {
    static WORDS: std::sync::OnceLock<std::collections::HashMap<String, &'static str>> =
        std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for (d, _) in table() {
            for seg in d
                .path
                .split('/')
                .filter(|s| !s.is_empty() && !s.starts_with('{'))
            {
                m.insert(seg.to_ascii_lowercase(), seg);
            }
        }
        for base in BASES {
            for seg in base.split('/').filter(|s| !s.is_empty()) {
                m.insert(seg.to_ascii_lowercase(), seg);
            }
        }
        m
    })
}

/// Express matches routes case-insensitively and ignores a trailing slash; so does this:
/// the route's own words are put back in their case before routing (parameters, such as a
/// guid or a profile name, are left as they are unless they spell a route word, which the
/// services compare case-insensitively anyway).
pub fn normalize<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let uri = req.uri();
    let path = uri.path();
    let head = path.get(..5).unwrap_or(path).to_ascii_lowercase();
    if !["/api/", "/mps/", "/rps/"].contains(&head.as_str()) {
        return req;
    }
    let words = words();
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let fixed: Vec<&str> = trimmed
        .split('/')
        .map(|seg| words.get(&seg.to_ascii_lowercase()).copied().unwrap_or(seg))
        .collect();
    let fixed = fixed.join("/");
    if fixed == path {
        return req;
    }
    let with_query = match uri.query() {
        Some(q) => format!("{fixed}?{q}"),
        None => fixed,
    };
    if let Ok(pq) = with_query.parse::<axum::http::uri::PathAndQuery>() {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        if let Ok(u) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    req
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn norm(uri: &str) -> String {
        let req = axum::http::Request::builder().uri(uri).body(()).unwrap();
        normalize(req).uri().to_string()
    }

    #[test]
    fn paths_are_matched_like_express() {
        assert_eq!(
            norm("/API/V1/amt/POWER/bootoptions/ABCD-1?x=1"),
            "/api/v1/amt/power/bootOptions/ABCD-1?x=1"
        );
        assert_eq!(norm("/mps/api/v1/devices/"), "/mps/api/v1/devices");
        assert_eq!(
            norm("/api/v1/admin/Profiles/Office"),
            "/api/v1/admin/profiles/Office"
        );
        // Parameters keep their case; the dashboard's own paths are left alone.
        assert_eq!(norm("/api/v1/devices/ABCDEF"), "/api/v1/devices/ABCDEF");
        assert_eq!(norm("/assets/App.js"), "/assets/App.js");
        assert_eq!(norm("/"), "/");
    }

    #[test]
    fn every_route_has_a_unique_method_and_path() {
        let mut seen = std::collections::HashSet::new();
        for (d, _) in table() {
            assert!(d.path.starts_with('/'), "{}", d.path);
            assert!(
                seen.insert((d.method, d.path)),
                "{} {} twice",
                d.method,
                d.path
            );
        }
    }
}
