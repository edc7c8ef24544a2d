#![allow(clippy::unwrap_used)]
//! The REST gateway through the whole pipeline: HTTP → gateway → gRPC → mps-command → NATS →
//! ingress → simulated device, plus the audit service and rps behind it.

use std::time::Duration;

use homeport_amt_sim::Fault;
use homeport_tests::gateway::{gateway_config, GatewayHandle, Pipeline, ADMIN_PASSWORD};
use homeport_tests::rps::rps_config;
use homeport_tests::TestEnv;
use serde_json::{json, Value};

const DEVICE_404: &str = "Device not found/connected. Please connect again using CIRA.";

fn errors_at(v: &Value) -> Vec<(String, String)> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {v}"))
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "field", "{e}");
            (
                e["location"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mps_routes_answer_like_mps_through_the_whole_pipeline() {
    let p = Pipeline::start("gwmps", 3, 41, "acme").await;
    let (env, gw) = (&p.env, &p.gw);
    let other_cfg = env
        .enrolled_fleet(p.ingress.local_addr(), 1, 42, "other")
        .await;
    let other = env
        .start_connected(other_cfg, Duration::from_secs(30))
        .await;
    let mut vanishing = env
        .enrolled_fleet(p.ingress.local_addr(), 1, 43, "acme")
        .await;
    vanishing.faults = vec![(Fault::VanishMidCall, 1.0)];
    let vanishing = env
        .start_connected(vanishing, Duration::from_secs(30))
        .await;
    let guid = p.guid(0);
    let other_guid = other.identities()[0].guid.clone();
    let vguid = vanishing.identities()[0].guid.clone();
    let g2 = p.guid(1);
    let token = Box::pin(sign_in(gw)).await;
    Box::pin(registry(gw, &token, &guid, &other_guid)).await;
    Box::pin(amt(gw, &token, &guid, &vguid)).await;
    Box::pin(events_and_service(gw, &token, &guid, &g2)).await;

    other.stop().await;
    vanishing.stop().await;
    p.stop().await;
}

async fn sign_in(gw: &GatewayHandle) -> String {
    let mut anon = gw.client().await;
    // Sign-in: the reference's validation, refusal and token shapes.
    let (st, v) = anon
        .json("POST", "/api/v1/authorize", Some(&json!({"password": "x"})))
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        errors_at(&v),
        vec![
            ("body".into(), "username".into()),
            ("body".into(), "username".into())
        ]
    );
    assert_eq!(v["errors"][1]["msg"], "User name is required");
    let (st, v) = anon
        .json(
            "POST",
            "/api/v1/authorize",
            Some(&json!({"username": "admin", "password": "wrong"})),
        )
        .await;
    assert_eq!(
        (st, v),
        (
            401,
            json!({"message": "Incorrect Username and/or Password!"})
        )
    );
    let (st, v) = anon
        .json(
            "POST",
            "/mps/login/api/v1/authorize",
            Some(&json!({"username": "ADMIN", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (payload["tenantId"].as_str(), payload["deviceId"].as_str()),
        (Some("acme"), Some("*"))
    );
    assert!(payload["exp"].as_i64().unwrap() > chrono::Utc::now().timestamp() + 3000);
    token
}

async fn registry(gw: &GatewayHandle, token: &str, guid: &str, other_guid: &str) {
    // Without a token, or with a bad or foreign-signed one: 401.
    for bad in [
        None,
        Some("not.a.token"),
        Some(
            &*homeport_auth::mint_hs256(b"another-secret-0123456789abcdefghij", "x", "acme", 60)
                .unwrap(),
        ),
    ] {
        let mut c = gw.client().await;
        c.token = bad.map(str::to_owned);
        let (st, v) = c.json("GET", "/api/v1/devices", None).await;
        assert_eq!(st, 401, "{bad:?}: {v}");
        assert_eq!(v["error"], "Unauthorized");
    }

    let mut c = gw.client().await.with_token(token);
    // The registry.
    let (st, v) = c.json("GET", "/api/v1/devices?$count=true", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["totalCount"], 4, "{v}");
    let list = v["data"].as_array().unwrap();
    assert!(list.iter().all(|d| d["tenantId"] == "acme"), "{v}");
    assert!(
        list.iter().any(|d| d["guid"] == guid
            && d["connectionStatus"] == true
            && d["mpsInstance"] == "node-a"),
        "{v}"
    );
    let (st, v) = c.json("GET", "/api/v1/devices?$top=2&$skip=1", None).await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let (st, v) = c.json("GET", "/api/v1/devices?$top=abc", None).await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("query".into(), "$top".into())])
    );
    let (st, v) = c
        .json(
            "GET",
            &format!(
                "/api/v1/devices?search={}&$count=true",
                &guid[..13].to_uppercase()
            ),
            None,
        )
        .await;
    assert_eq!((st, v["totalCount"].as_u64()), (200, Some(1)), "{v}");
    let (st, v) = c
        .json("GET", "/api/v1/devices?status=1&$count=true", None)
        .await;
    assert_eq!(
        (st, v["data"].as_array().map(Vec::len)),
        (200, Some(4)),
        "{v}"
    );
    let (st, v) = c.json("GET", "/api/v1/devices/stats", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            v["totalCount"].as_u64(),
            v["connectedCount"].as_u64(),
            v["disconnectedCount"].as_u64()
        ),
        (Some(4), Some(4), Some(0)),
        "{v}"
    );
    assert_eq!(v["nodes"], json!([{"node": "node-a", "connectedCount": 4}]));
    let (st, v) = c
        .json("GET", &format!("/api/v1/devices/{guid}"), None)
        .await;
    assert_eq!((st, v["guid"].as_str()), (200, Some(guid)), "{v}");
    assert!(
        v["lastSeen"].is_string(),
        "a connected device was seen now: {v}"
    );
    let (st, v2) = c
        .json("GET", &format!("/mps/api/v1/devices/{guid}"), None)
        .await;
    assert_eq!(
        (st, v2["guid"].clone()),
        (200, v["guid"].clone()),
        "Kong's prefix serves the same route"
    );
    // Another tenant's device is exactly an unknown one.
    let unknown = "00000000-0000-4000-8000-00000000abcd";
    for g in [other_guid, unknown] {
        let r = c.call("GET", &format!("/api/v1/devices/{g}"), None).await;
        assert_eq!((r.status, r.body.len()), (404, 0));
        let (st, v) = c
            .json("GET", &format!("/api/v1/amt/power/state/{g}"), None)
            .await;
        assert_eq!((st, v["error"].as_str()), (404, Some(DEVICE_404)), "{v}");
        assert_eq!(v["errorDescription"], format!("guid : {g}"));
    }
    let (st, v) = c.json("GET", "/api/v1/devices/not-a-guid", None).await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("params".into(), "guid".into())])
    );

    // Create (201), upsert (200), update, tags, delete (204), delete again (404).
    let new = "5f6a0f2e-3b1c-4d2a-9e8f-0123456789ab";
    let body = json!({"guid": new, "hostname": "pc-1", "mpsusername": "admin1", "tags": ["lab"]});
    let (st, v) = c.json("POST", "/api/v1/devices", Some(&body)).await;
    assert_eq!(
        (st, v["hostname"].as_str(), v["connectionStatus"].as_bool()),
        (201, Some("pc-1"), Some(false)),
        "{v}"
    );
    let (st, v) = c
        .json(
            "POST",
            "/api/v1/devices",
            Some(&json!({"guid": new, "friendlyName": "Lab PC"})),
        )
        .await;
    assert_eq!(
        (st, v["friendlyName"].as_str(), v["hostname"].as_str()),
        (200, Some("Lab PC"), Some("pc-1")),
        "{v}"
    );
    let (st, v) = c
        .json(
            "PATCH",
            "/api/v1/devices",
            Some(&json!({"guid": new, "tags": ["lab", "floor-2"]})),
        )
        .await;
    assert_eq!(
        (st, v["tags"].clone()),
        (200, json!(["lab", "floor-2"])),
        "{v}"
    );
    let (st, v) = c.json("GET", "/api/v1/devices/tags", None).await;
    assert_eq!(st, 200);
    assert!(v.as_array().unwrap().contains(&json!("floor-2")), "{v}");
    let (st, v) = c
        .json(
            "GET",
            "/api/v1/devices?tags=floor-2,nothing&method=AND&$count=true",
            None,
        )
        .await;
    assert_eq!((st, v["totalCount"].as_u64()), (200, Some(0)), "{v}");
    let (st, v) = c
        .json(
            "GET",
            "/api/v1/devices?tags=floor-2,nothing&$count=true",
            None,
        )
        .await;
    assert_eq!(
        (st, v["totalCount"].as_u64()),
        (200, Some(1)),
        "OR is the default: {v}"
    );
    let (st, v) = c
        .json(
            "POST",
            "/api/v1/devices",
            Some(&json!({"guid": "nope", "hostname": 5, "tags": "x"})),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        errors_at(&v),
        vec![
            ("body".into(), "guid".into()),
            ("body".into(), "hostname".into()),
            ("body".into(), "tags".into())
        ]
    );
    let (st, v) = c
        .json(
            "POST",
            "/api/v1/devices",
            Some(&json!({"guid": other_guid, "mpsusername": "x"})),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("Unique key violation")),
        "{v}"
    );
    let (st, v) = c
        .json(
            "PATCH",
            "/api/v1/devices",
            Some(&json!({"guid": unknown, "hostname": "x"})),
        )
        .await;
    assert_eq!((st, v["error"].as_str()), (404, Some("NOT FOUND")), "{v}");
    let r = c
        .call(
            "DELETE",
            &format!("/api/v1/devices/{new}?isSecretToBeDeleted=true"),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let (st, v) = c
        .json("DELETE", &format!("/api/v1/devices/{new}"), None)
        .await;
    assert_eq!(
        (st, v["message"].as_str()),
        (404, Some(&*format!("Device ID {new} not found")))
    );
    let (st, v) = c
        .json(
            "DELETE",
            &format!("/api/v1/devices/{guid}?isSecretToBeDeleted=t"),
            None,
        )
        .await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("query".into(), "isSecretToBeDeleted".into())])
    );
}

async fn amt(gw: &GatewayHandle, token: &str, guid: &str, vguid: &str) {
    let mut c = gw.client().await.with_token(token);
    let unknown = "00000000-0000-4000-8000-00000000abcd";
    // Bodies: malformed JSON and oversized ones.
    let r = c
        .conn
        .request(
            "POST",
            "/api/v1/devices",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", "application/json"),
            ],
            b"{\"guid\": ",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "Incorrect URI or Bad Request");
    let big = format!(
        "{{\"guid\":\"{guid}\",\"hostname\":\"{}\"}}",
        "x".repeat(200_000)
    );
    // (The server cannot read past an oversized body, so it closes that connection.)
    let mut once = gw.client().await;
    let r = once
        .conn
        .request(
            "POST",
            "/api/v1/devices",
            &[("Authorization", &format!("Bearer {token}"))],
            big.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());

    // AMT routes.
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/power/state/{guid}"), None)
        .await;
    assert_eq!((st, v["powerstate"].as_u64()), (200, Some(2)), "{v}");
    let (st, v) = c
        .json(
            "GET",
            &format!("/api/v1/amt/power/capabilities/{guid}"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["Power up"].as_u64(), v["Reset"].as_u64()),
        (200, Some(2), Some(10)),
        "{v}"
    );
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/amt/power/action/{guid}"),
            Some(&json!({"action": 5})),
        )
        .await;
    assert_eq!(
        (
            st,
            v["Body"]["ReturnValue"].as_u64(),
            v["Body"]["ReturnValueStr"].as_str()
        ),
        (200, Some(0), Some("SUCCESS")),
        "{v}"
    );
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/amt/power/action/{guid}"),
            Some(&json!({"action": 1})),
        )
        .await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("body".into(), "action".into())])
    );
    // Validation runs before the device is looked up, as in MPS.
    let (st, _) = c
        .json(
            "POST",
            &format!("/api/v1/amt/power/action/{unknown}"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/amt/power/bootOptions/{guid}"),
            Some(&json!({"action": 101, "useSOL": false})),
        )
        .await;
    assert_eq!(
        (st, v["Body"]["ReturnValue"].as_u64()),
        (200, Some(0)),
        "{v}"
    );
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/version/{guid}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    let ids = v["CIM_SoftwareIdentity"]["responses"].as_array().unwrap();
    assert!(
        ids.iter()
            .any(|i| i["InstanceID"] == "AMT" && i["VersionString"].is_string()),
        "{v}"
    );
    assert!(v["AMT_SetupAndConfigurationService"]["response"]["ProvisioningMode"].is_u64());
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/generalSettings/{guid}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["Body"]["HostName"].is_string() || v["Body"].as_object().is_some_and(|o| !o.is_empty()),
        "{v}"
    );
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/hardwareInfo/{guid}"), None)
        .await;
    assert_eq!(
        (st, v["CIM_Chassis"]["status"].as_u64()),
        (200, Some(200)),
        "{v}"
    );
    assert!(
        !v["CIM_Processor"]["responses"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    let (st, v) = c.json("POST", &format!("/api/v1/amt/features/{guid}"), Some(&json!({"userConsent": "kvm", "enableSOL": "true", "enableIDER": false, "enableKVM": true}))).await;
    assert_eq!((st, v), (200, json!({"status": "AMT Features updated"})));
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/features/{guid}"), None)
        .await;
    assert_eq!(
        (
            st,
            v["userConsent"].as_str(),
            v["SOL"].as_bool(),
            v["KVM"].as_bool(),
            v["IDER"].as_bool()
        ),
        (200, Some("kvm"), Some(true), Some(true), Some(false)),
        "{v}"
    );
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/amt/features/{guid}"),
            Some(&json!({"userConsent": "sometimes"})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/log/event/{guid}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|r| r["Desc"].is_string() && r["EntityStr"].is_string()),
        "{v}"
    );
    let (st, v) = c
        .json(
            "GET",
            &format!("/api/v1/amt/log/audit/{guid}?startIndex=1"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["totalCnt"].is_u64(), v["records"].is_array()),
        (200, true, true),
        "{v}"
    );
    let start = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/amt/alarmOccurrences/{guid}"),
            Some(&json!({"ElementName": "wake", "StartTime": start, "Interval": 1440})),
        )
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("SUCCESS")), "{v}");
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/alarmOccurrences/{guid}"), None)
        .await;
    assert_eq!(st, 200);
    let alarm = v
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ElementName"] == "wake")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (
            alarm["InternalInMinutes"].as_u64(),
            alarm["Interval"]["Interval"].as_str()
        ),
        (Some(1440), Some("P1DT0M")),
        "{alarm}"
    );
    let (st, _) = c
        .json(
            "POST",
            &format!("/api/v1/amt/alarmOccurrences/{guid}"),
            Some(&json!({"ElementName": "x"})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, v) = c
        .json(
            "DELETE",
            &format!("/api/v1/amt/alarmOccurrences/{guid}"),
            Some(&json!({"Name": alarm["InstanceID"]})),
        )
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("SUCCESS")), "{v}");
    let (st, v) = c
        .json(
            "DELETE",
            &format!("/api/v1/amt/alarmOccurrences/{guid}"),
            Some(&json!({"Name": "no-such-alarm"})),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (404, Some("Alarm instance not found")),
        "{v}"
    );
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/userConsentCode/{guid}"), None)
        .await;
    assert_eq!(
        (st, v["Body"]["ReturnValue"].as_u64()),
        (200, Some(0)),
        "{v}"
    );
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/amt/userConsentCode/{guid}"),
            Some(&json!({"consentCode": 123456})),
        )
        .await;
    assert!(
        matches!(st, 200 | 400) && v["Body"]["ReturnValue"].is_u64(),
        "{st} {v}"
    );
    let (st, v) = c
        .json(
            "GET",
            &format!("/api/v1/amt/userConsentCode/cancel/{guid}"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["Body"]["ReturnValue"].as_u64()),
        (200, Some(0)),
        "{v}"
    );
    let (st, v) = c
        .json(
            "GET",
            &format!("/api/v1/devices/redirectstatus/{guid}"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["isKVMConnected"].as_bool()),
        (200, Some(false)),
        "{v}"
    );
    let (st, v) = c
        .json("DELETE", &format!("/api/v1/devices/refresh/{guid}"), None)
        .await;
    assert_eq!((st, v["success"].as_u64()), (200, Some(200)), "{v}");
    // Disconnect: the session ends (reason "requested"), and the device comes back by itself.
    let (st, v) = c
        .json(
            "DELETE",
            &format!("/api/v1/devices/disconnect/{guid}"),
            None,
        )
        .await;
    assert_eq!((st, v["success"].as_u64()), (200, Some(200)), "{v}");
    assert_eq!(
        v["description"],
        format!("Device CIRA connection disconnected : {guid}")
    );
    let mut back = false;
    for _ in 0..100 {
        let (st, v) = c
            .json(
                "GET",
                &format!("/api/v1/events?device={guid}&kind=disconnected&order=desc&$top=5"),
                None,
            )
            .await;
        assert_eq!(st, 200);
        let requested = v["data"].as_array().unwrap().iter().any(|e| {
            e["summary"]
                .as_str()
                .is_some_and(|s| s.contains("(requested)"))
        });
        let (_, d) = c
            .json("GET", &format!("/api/v1/devices/{guid}"), None)
            .await;
        if requested && d["connectionStatus"] == true {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        back,
        "a disconnected event with reason \"requested\", then the device reconnected"
    );
    let (st, v) = c
        .json(
            "DELETE",
            &format!("/api/v1/devices/disconnect/{unknown}"),
            None,
        )
        .await;
    assert_eq!((st, v["error"].as_str()), (404, Some(DEVICE_404)), "{v}");
    let (st, v) = c
        .json(
            "GET",
            &format!("/api/v1/authorize/redirection/{guid}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // A redirection token is not an API token.
    let mut relay = gw.client().await.with_token(v["token"].as_str().unwrap());
    assert_eq!(relay.json("GET", "/api/v1/devices", None).await.0, 401);

    // Express's routing: case-insensitive, a trailing slash ignored; an AMT route does not
    // check its guid; a known path with another method is an unknown route.
    let (st, v) = c
        .json(
            "POST",
            &format!("/api/v1/AMT/power/bootoptions/{guid}"),
            Some(&json!({"action": 101})),
        )
        .await;
    assert_eq!(
        (st, v["Body"]["ReturnValue"].as_u64()),
        (200, Some(0)),
        "{v}"
    );
    let (st, v) = c.json("GET", "/api/v1/devices/?$top=1", None).await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");
    let (st, v) = c.json("GET", "/api/v1/amt/power/state/1", None).await;
    assert_eq!(
        (st, v["error"].as_str(), v["errorDescription"].as_str()),
        (404, Some(DEVICE_404), Some("guid : 1")),
        "{v}"
    );
    let (st, _) = c.json("PUT", "/api/v1/devices", Some(&json!({}))).await;
    assert_eq!(st, 404);

    // A device that drops its connection mid-call: a clear error, and the gateway goes on.
    let (st, v) = c
        .json("GET", &format!("/api/v1/amt/power/state/{vguid}"), None)
        .await;
    assert!(matches!(st, 404 | 500), "{st} {v}");
    assert!(
        v["errorDescription"]
            .as_str()
            .is_some_and(|d| d.contains(vguid)),
        "{v}"
    );
    let (st, _) = c
        .json("GET", &format!("/api/v1/amt/power/state/{guid}"), None)
        .await;
    assert_eq!(st, 200);
}

async fn events_and_service(gw: &GatewayHandle, token: &str, guid: &str, g2: &str) {
    let mut c = gw.client().await.with_token(token);
    let mut anon = gw.client().await;
    // The events of the calls above, stored and counted.
    let mut found = Value::Null;
    for _ in 0..50 {
        let (st, v) = c
            .json(
                "GET",
                &format!("/api/v1/events?device={guid}&order=desc&$top=50"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        if let Some(e) = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "PowerAction")
        {
            found = e.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        found["deviceGuid"], guid,
        "a PowerAction event is stored: {found}"
    );
    let (st, v) = c
        .json(
            "GET",
            "/api/v1/events/counts?kinds=connected,disconnected&minutes=60",
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let connects: u64 = v["series"]["connected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(connects >= 4, "{v}");
    assert_eq!(v["series"]["connected"].as_array().unwrap().len(), 60);

    // Deactivation removes the device.
    let (st, v) = c
        .json("DELETE", &format!("/api/v1/amt/deactivate/{g2}"), None)
        .await;
    assert_eq!((st, v), (200, json!({"status": "SUCCESS"})));
    assert_eq!(
        c.call("GET", &format!("/api/v1/devices/{g2}"), None)
            .await
            .status,
        404
    );

    // The CIRA root the devices trust, as MPS serves it.
    let r = c.call("GET", "/api/v1/ciracert", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        r.text()
    );

    // The service routes and the document.
    let (st, v) = anon.json("GET", "/api/v1/version", None).await;
    assert_eq!((st, v["serviceVersion"].is_string()), (200, true));
    let (st, v) = anon.json("GET", "/api/v1/health", None).await;
    assert_eq!(
        (st, v["deviceApi"]["status"].as_str()),
        (200, Some("OK")),
        "{v}"
    );
    let (st, v) = anon.json("GET", "/api/v1/openapi.json", None).await;
    assert_eq!((st, v["openapi"].as_str()), (200, Some("3.1.0")));
    assert!(v["paths"]["/amt/power/state/{guid}"]["get"].is_object());
    let (st, _) = anon.json("GET", "/api/v1/no/such/route", None).await;
    assert_eq!(st, 404);
}

/// Every route in the OpenAPI document is served under each base (nothing answers the
/// unknown-route 404), so the document and the router cannot drift apart.
#[tokio::test]
async fn every_documented_route_is_served_under_every_prefix() {
    let doc = homeport_gateway::Gateway::openapi();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 35, "{}", paths.len());
    let unreachable: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let gw = GatewayHandle::start(gateway_config(
        unreachable,
        unreachable,
        unreachable,
        "acme",
    ))
    .await;
    let mut c = gw.client().await;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{guid}", "00000000-0000-4000-8000-000000000001")
                .replace(['{', '}'], "");
            for base in ["/api/v1", "/mps/api/v1", "/rps/api/v1"] {
                let r = c
                    .call(&method.to_uppercase(), &format!("{base}{concrete}"), None)
                    .await;
                let unknown = r.status == 404 && r.text().contains("no such route");
                assert!(
                    !unknown,
                    "{method} {base}{concrete} is documented but not routed"
                );
            }
        }
    }
    gw.stop().await;
}

/// SSE frames (`id`, `data`) in raw bytes of a chunked body.
fn sse_events(raw: &str) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in raw.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.trim().parse().ok();
        } else if let Some(d) = line.strip_prefix("data: ") {
            if let (Some(i), Ok(v)) = (id.take(), serde_json::from_str::<Value>(d)) {
                out.push((i, v));
            }
        }
    }
    out
}

async fn read_events(conn: &mut homeport_http1::client::Conn, want: usize) -> Vec<(u64, Value)> {
    let mut raw = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = sse_events(&raw);
        if events.len() >= want {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {want} events: {raw}",
            events.len()
        );
        let more = tokio::time::timeout(Duration::from_secs(20), conn.read_some())
            .await
            .expect("stream stalled")
            .expect("read");
        assert!(!more.is_empty(), "the stream ended: {raw}");
        raw.push_str(&String::from_utf8_lossy(&more));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_stream_resume_and_a_client_that_stops_reading_is_dropped() {
    use futures_util::StreamExt as _;
    let env = TestEnv::new("gwlive").await;
    let audit = env.start_audit().await;
    let unreachable: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let gw =
        GatewayHandle::start(gateway_config(unreachable, audit.addr, unreachable, "acme")).await;
    let token = homeport_tests::command::CommandHandle::token("acme");
    let auth = format!("Bearer {token}");
    let guid = "11111111-2222-4333-8444-555555555555";

    // Server-Sent Events: the caller's tenant only, each with its sequence as the id.
    let mut sse = homeport_http1::client::Conn::connect(gw.addr)
        .await
        .unwrap();
    let (status, headers) = sse
        .start_stream("/api/v1/events/stream", &[("Authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                && v.starts_with("text/event-stream"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.publish_event("other", guid, "connected").await;
    for kind in ["connected", "PowerAction", "disconnected"] {
        env.publish_event("acme", guid, kind).await;
    }
    let got = read_events(&mut sse, 3).await;
    let kinds: Vec<_> = got
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, vec!["connected", "PowerAction", "disconnected"]);
    assert!(got
        .iter()
        .all(|(id, v)| v["tenant"] == "acme" && v["sequence"] == *id && v["deviceGuid"] == guid));
    let last = got[2].0;
    drop(sse);

    // Missed while away, then resumed with Last-Event-ID: no gap, no repeat.
    env.publish_event("acme", guid, "connected").await;
    env.publish_event("acme", guid, "disconnected").await;
    let mut sse = homeport_http1::client::Conn::connect(gw.addr)
        .await
        .unwrap();
    let (status, _) = sse
        .start_stream(
            "/api/v1/events/stream",
            &[
                ("Authorization", &auth),
                ("Last-Event-ID", &last.to_string()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let resumed = read_events(&mut sse, 2).await;
    assert_eq!(
        resumed
            .iter()
            .map(|(_, v)| v["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["connected", "disconnected"]
    );
    assert!(resumed[0].0 > last);
    drop(sse);
    let mut bad = gw.client().await;
    assert_eq!(bad.json("GET", "/api/v1/events/stream", None).await.0, 401);

    // The WebSocket variant, with the token as the subprotocol (as browsers must send it),
    // which the server echoes.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/api/v1/events/ws?after={last}", gw.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", token.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(token.as_str())
    );
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            kinds.push(v["kind"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(kinds, vec!["connected", "disconnected"]);
    ws.close(None).await.unwrap();
    let mut no_token =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/api/v1/events/ws",
            gw.addr
        ))
        .unwrap();
    no_token
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "not-a-token".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        tokio_tungstenite::client_async(no_token, tcp)
            .await
            .is_err(),
        "no token, no feed"
    );

    // A client that stops reading: its buffer fills, it is dropped (told why when it
    // reads again, or cut by the write deadline), its place is freed, and memory stays flat.
    wait_streams(&gw, 0).await;
    use tokio::io::AsyncReadExt as _;
    let mut slow = stalled_stream(&gw, &auth).await;
    let mut published = 0u64;
    let started = std::time::Instant::now();
    while gw.metric("homeport_gateway_event_streams") > 0 {
        assert!(
            published < 60_000 && started.elapsed() < Duration::from_secs(90),
            "the slow client was never dropped ({published} events)"
        );
        publish_burst(&env, guid, 2000).await;
        published += 2000;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What is still readable ends, not more forever: dropped for falling behind, the response
    // ends with a close event; cut by the write deadline, the connection ends.
    let dropped = gw.metric("homeport_gateway_event_streams_dropped_total") >= 1;
    let mut tail: Vec<u8> = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = vec![0u8; 65536];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return "connection closed",
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    let keep = tail.len().saturating_sub(1024);
                    tail.drain(..keep);
                    if tail.ends_with(b"\r\n0\r\n\r\n") {
                        return "response ended";
                    }
                }
            }
        }
    })
    .await;
    let how = ended.expect("the dropped client's stream ended");
    if dropped && how == "response ended" {
        let text = String::from_utf8_lossy(&tail).into_owned();
        assert!(
            text.contains("event: close") && text.contains("Last-Event-ID"),
            "{text}"
        );
    }

    gw.stop().await;
    audit.stop().await;
    env.cleanup().await;
}

/// A live-event client with a 4 KB receive buffer that reads the response head and then
/// nothing more.
async fn stalled_stream(gw: &GatewayHandle, auth: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(gw.addr).await.unwrap();
    slow.write_all(
        format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 512];
    let n = slow.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    wait_streams(gw, 1).await;
    slow
}

async fn wait_streams(gw: &GatewayHandle, n: i64) {
    for _ in 0..100 {
        if gw.metric("homeport_gateway_event_streams") == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} live streams, expected {n}",
        gw.metric("homeport_gateway_event_streams")
    );
}

/// `n` events published together (acks awaited at the end), as a busy fleet produces them.
async fn publish_burst(env: &TestEnv, guid: &str, n: usize) {
    use prost::Message as _;
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        let ev = homeport_contracts::events::envelope("acme", guid, "PowerAction", "test");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", ev.id.as_str());
        acks.push(
            env.js
                .publish_with_headers(
                    env.names.device_event("acme", guid, "PowerAction"),
                    headers,
                    ev.encode_to_vec().into(),
                )
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rps_admin_routes_answer_like_rps_under_both_prefixes() {
    use homeport_amt_sim::provision::ProvisioningPki;
    let env = TestEnv::new("gwrps").await;
    let rps = env.start_rps(rps_config()).await;
    let unreachable: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let gw = GatewayHandle::start(gateway_config(
        unreachable,
        unreachable,
        rps.admin_addr,
        "acme",
    ))
    .await;
    let mut c = gw
        .client()
        .await
        .with_token(&homeport_tests::command::CommandHandle::token("acme"));
    let mut other = gw
        .client()
        .await
        .with_token(&homeport_tests::command::CommandHandle::token("other"));
    let mut anon = gw.client().await;
    let pki = ProvisioningPki::generate("provisioning.sim.homeport.test", "pfx-Pass-1").unwrap();
    let root = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pki.root_der);
    let a = "/rps/api/v1/admin";

    assert_eq!(
        anon.json("GET", &format!("{a}/profiles"), None).await.0,
        401
    );
    let (st, v) = c.json("GET", "/api/v1/admin", None).await;
    assert_eq!(
        (st, v["message"].as_str()),
        (200, Some("admin path. use admin/profiles"))
    );

    // CIRA configs.
    let cira = json!({"configName": "office-cira", "mpsServerAddress": "mps.example.com", "serverAddressFormat": 201,
        "mpsPort": 4433, "username": "admin12", "password": "Cira-Pass-123", "authMethod": 2, "mpsRootCertificate": root, "proxyDetails": ""});
    let (st, v) = c
        .json("POST", &format!("{a}/ciraconfigs"), Some(&cira))
        .await;
    assert_eq!(
        (st, v["configName"].as_str(), v["tenantId"].as_str()),
        (201, Some("office-cira"), Some("acme")),
        "{v}"
    );
    assert!(v["version"].is_string(), "{v}");
    let (st, v) = c
        .json("POST", &format!("{a}/ciraconfigs"), Some(&cira))
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("Unique key violation")),
        "{v}"
    );
    let (st, v) = c.json("POST", &format!("{a}/ciraconfigs"), Some(&json!({"configName": "bad", "mpsServerAddress": "mps.example.com", "serverAddressFormat": 201, "mpsPort": 80, "username": "admin12", "authMethod": 2, "mpsRootCertificate": root}))).await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("body".into(), "mpsPort".into())]),
        "{v}"
    );

    // Profiles, with a reference to the CIRA config.
    let profile = json!({"profileName": "office", "activation": "ccmactivate", "generateRandomPassword": true,
        "ciraConfigName": "office-cira", "dhcpEnabled": true, "userConsent": "All", "tags": ["hq"]});
    let (st, v) = c
        .json("POST", &format!("{a}/profiles"), Some(&profile))
        .await;
    assert_eq!(
        (st, v["profileName"].as_str(), v["activation"].as_str()),
        (201, Some("office"), Some("ccmactivate")),
        "{v}"
    );
    assert!(
        v.get("amtPassword").is_none(),
        "secrets are never returned: {v}"
    );
    let version = v["version"].as_str().unwrap().to_owned();
    let (st, v) = c.json("POST", &format!("{a}/profiles"), Some(&json!({"profileName": "p2", "activation": "ccmactivate", "amtPassword": "short", "dhcpEnabled": true}))).await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("body".into(), "amtPassword".into())]),
        "{v}"
    );
    let (st, v) = c.json("POST", &format!("{a}/profiles"), Some(&json!({"profileName": "p3", "activation": "ccmactivate", "generateRandomPassword": true, "tlsMode": 1}))).await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("body".into(), "tlsMode".into())]),
        "{v}"
    );
    let (st, v) = c
        .json(
            "PATCH",
            &format!("{a}/profiles"),
            Some(&json!({"profileName": "office", "version": version, "tags": ["hq", "floor-2"]})),
        )
        .await;
    assert_eq!(
        (st, v["tags"].clone(), v["ciraConfigName"].as_str()),
        (200, json!(["hq", "floor-2"]), Some("office-cira")),
        "PATCH keeps what it does not name: {v}"
    );
    let (st, v) = c
        .json(
            "PATCH",
            &format!("{a}/profiles"),
            Some(&json!({"profileName": "office", "version": version, "tags": []})),
        )
        .await;
    assert_eq!(st, 409, "a stale version: {v}");
    let (st, v) = c
        .json("GET", &format!("{a}/profiles?$count=true"), None)
        .await;
    assert_eq!((st, v["totalCount"].as_u64()), (200, Some(1)), "{v}");
    let (st, v) = c.json("GET", "/api/v1/admin/profiles/office", None).await;
    assert_eq!(
        (st, v["profileName"].as_str()),
        (200, Some("office")),
        "{v}"
    );
    let (st, v) = c.json("GET", &format!("{a}/profiles/nope"), None).await;
    assert_eq!(
        (st, v),
        (
            404,
            json!({"error": "Not Found", "message": "AMT profile nope Not Found"})
        )
    );
    // Another tenant sees none of it.
    let (st, v) = other
        .json("GET", &format!("{a}/profiles/office"), None)
        .await;
    assert_eq!((st, v["error"].as_str()), (404, Some("Not Found")));
    let (st, v) = other.json("GET", &format!("{a}/ciraconfigs"), None).await;
    assert_eq!((st, v), (200, json!([])));
    // A referenced CIRA config cannot go.
    let (st, v) = c
        .json("DELETE", &format!("{a}/ciraconfigs/office-cira"), None)
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("Foreign key violation")),
        "{v}"
    );

    // Domains: the PFX is checked and never returned.
    let domain = json!({"profileName": "sim", "domainSuffix": "sim.homeport.test", "provisioningCert": pki.pfx_b64,
        "provisioningCertStorageFormat": "string", "provisioningCertPassword": "pfx-Pass-1"});
    let (st, v) = c.json("POST", &format!("{a}/domains"), Some(&domain)).await;
    assert_eq!(
        (st, v["domainSuffix"].as_str()),
        (201, Some("sim.homeport.test")),
        "{v}"
    );
    assert!(
        v.get("provisioningCert").is_none()
            && v.get("provisioningCertPassword").is_none()
            && v["expirationDate"].is_string(),
        "{v}"
    );
    let mut wrong = domain.clone();
    wrong["profileName"] = json!("sim2");
    wrong["provisioningCertPassword"] = json!("wrong");
    let (st, v) = c.json("POST", &format!("{a}/domains"), Some(&wrong)).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = c.json("GET", &format!("{a}/domains"), None).await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");

    // Wireless configs.
    let wifi = json!({"profileName": "hqwifi", "authenticationMethod": 6, "encryptionMethod": 4, "ssid": "HQ", "pskPassphrase": "passphrase-1", "linkPolicy": [14, 16]});
    let (st, v) = c
        .json("POST", &format!("{a}/wirelessconfigs"), Some(&wifi))
        .await;
    assert_eq!(
        (st, v["ssid"].as_str(), v.get("pskPassphrase").is_none()),
        (201, Some("HQ"), true),
        "{v}"
    );
    let (st, v) = c.json("POST", &format!("{a}/wirelessconfigs"), Some(&json!({"profileName": "w2", "authenticationMethod": 6, "encryptionMethod": 4, "ssid": "HQ", "pskPassphrase": "short"}))).await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("body".into(), "pskPassphrase".into())]),
        "{v}"
    );
    // Profiles and wireless configs are updated only with the version read, as in RPS.
    let patch = json!({"profileName": "hqwifi", "ssid": "HQ-5G", "pskPassphrase": "passphrase-2"});
    let (st, v) = c
        .json("PATCH", &format!("{a}/wirelessconfigs"), Some(&patch))
        .await;
    assert_eq!(
        (st, errors_at(&v)),
        (400, vec![("body".into(), "version".into())]),
        "{v}"
    );
    let (_, current) = c
        .json("GET", &format!("{a}/wirelessconfigs/hqwifi"), None)
        .await;
    let mut patch = patch;
    patch["version"] = current["version"].clone();
    let (st, v) = c
        .json("PATCH", &format!("{a}/wirelessconfigs"), Some(&patch))
        .await;
    assert_eq!((st, v["ssid"].as_str()), (200, Some("HQ-5G")), "{v}");
    // A stale version sent as If-Match: 412 with the current object and its ETag.
    let r = c
        .conn
        .request(
            "PATCH",
            &format!("{a}/wirelessconfigs"),
            &[
                (
                    "Authorization",
                    &format!("Bearer {}", c.token.clone().unwrap()),
                ),
                (
                    "If-Match",
                    &format!("\"{}\"", current["version"].as_str().unwrap()),
                ),
            ],
            json!({"profileName": "hqwifi", "ssid": "again", "pskPassphrase": "passphrase-3"})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 412, "{}", r.text());
    let now: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(now["ssid"], "HQ-5G");
    assert_eq!(
        r.header("etag"),
        Some(&*format!("\"{}\"", now["version"].as_str().unwrap()))
    );
    // A CIRA config's static password is write-only: an update that leaves it out keeps it.
    let (st, v) = c
        .json(
            "PATCH",
            &format!("{a}/ciraconfigs"),
            Some(&json!({"configName": "office-cira", "mpsPort": 4434})),
        )
        .await;
    assert_eq!((st, v["mpsPort"].as_u64()), (200, Some(4434)), "{v}");
    let stored = env
        .secrets
        .get(&homeport_rps::specs::secret_path(
            "acme",
            homeport_rps::specs::CIRA,
            "office-cira",
        ))
        .await
        .unwrap()
        .expect("the static CIRA password is still stored");
    assert!(stored.contains_key(homeport_rps::specs::MPS_PASSWORD));

    // Bodies that are not JSON, or too large.
    let r = c
        .conn
        .request(
            "POST",
            &format!("{a}/profiles"),
            &[(
                "Authorization",
                &format!("Bearer {}", c.token.clone().unwrap()),
            )],
            b"{nope",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let mut once = gw.client().await.with_token(c.token.as_deref().unwrap());
    let big = json!({"profileName": "x".repeat(150_000)});
    assert_eq!(
        once.call("POST", &format!("{a}/profiles"), Some(&big))
            .await
            .status,
        413
    );

    // Deletes: 204, then 404.
    for (kind, name) in [
        ("profiles", "office"),
        ("ciraconfigs", "office-cira"),
        ("domains", "sim"),
        ("wirelessconfigs", "hqwifi"),
    ] {
        let r = c.call("DELETE", &format!("{a}/{kind}/{name}"), None).await;
        assert_eq!(r.status, 204, "{kind}: {}", r.text());
        let (st, v) = c.json("DELETE", &format!("{a}/{kind}/{name}"), None).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (404, Some("Not Found")),
            "{kind}: {v}"
        );
    }

    gw.stop().await;
    rps.stop().await;
    env.cleanup().await;
}

/// A live-event client that stops reading while its buffer still has room is cut by the
/// kernel's write deadline (TCP_USER_TIMEOUT on a zero window), not by the buffer: its place
/// and upstream feed are freed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_by_the_write_deadline() {
    let env = TestEnv::new("gwdeadline").await;
    let audit = env.start_audit().await;
    let unreachable: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut config = gateway_config(unreachable, audit.addr, unreachable, "acme");
    // Room for every event below: only the write deadline (3 s) can end this client.
    config.stream_buffer = 100_000;
    let gw = GatewayHandle::start(config).await;
    let auth = format!(
        "Bearer {}",
        homeport_tests::command::CommandHandle::token("acme")
    );
    let guid = "11111111-2222-4333-8444-666666666666";
    let _slow = stalled_stream(&gw, &auth).await;
    let started = std::time::Instant::now();
    let mut published = 0;
    while gw.metric("homeport_gateway_event_streams") > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the stalled client still holds its place after {published} events"
        );
        if published < 30_000 {
            publish_burst(&env, guid, 2000).await;
            published += 2000;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        gw.metric("homeport_gateway_event_streams_dropped_total"),
        0,
        "cut by the deadline, not dropped for its buffer"
    );
    gw.stop().await;
    audit.stop().await;
    env.cleanup().await;
}
