//! homeportctl's whole command lines against the real service: a simulated device behind
//! cira-ingress, mps-command on a loopback port, tokens signed with the test secret.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use homeport_tests::command::{command_config, CommandHandle};
use homeport_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Runs one command line (the CLI has its own runtime, so off this one's threads).
async fn ctl(endpoint: &str, tenant: &str, args: &[&str]) -> (Result<(), String>, String) {
    let mut argv: Vec<String> = [
        "homeportctl",
        "--endpoint",
        endpoint,
        "--token",
        &CommandHandle::token(tenant),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (r, text) = homeportctl::run_captured(&argv);
        (r.map_err(|e| e.line()), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_the_real_service() {
    let env = TestEnv::new("ctl").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let cfg = env
        .enrolled_fleet(ingress.local_addr(), 3, 51, "acme")
        .await;
    let fleet = env.start_connected(cfg, WAIT).await;
    let cmd = env
        .start_command(command_config(Duration::from_secs(5)))
        .await;
    let ep = format!("http://{}", cmd.addr);
    let guid = fleet.identities()[0].guid.clone();

    // Registry: list every page as JSON, the table, add with a password file, update, remove.
    let (r, text) = ctl(
        &ep,
        "acme",
        &["devices", "list", "--all", "--page-size", "2", "--json"],
    )
    .await;
    r.unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["devices"].as_array().unwrap().len(), 3, "{text}");
    assert_eq!(json["devices"][0]["status"], "CONNECTION_STATUS_CONNECTED");
    let (r, text) = ctl(&ep, "acme", &["devices", "list"]).await;
    r.unwrap();
    assert!(text.lines().next().unwrap().starts_with("GUID"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    let pw = env.dir.join("amt.pw");
    std::fs::write(&pw, "Amt-Pass1!\n").unwrap();
    let new_guid = "99999999-8888-7777-6666-555555555555";
    let (r, _) = ctl(
        &ep,
        "acme",
        &[
            "devices",
            "add",
            new_guid,
            "--mps-username",
            "u",
            "--amt-password-file",
            pw.to_str().unwrap(),
            "--tag",
            "lab",
        ],
    )
    .await;
    r.unwrap();
    let stored = homeport_secrets::DeviceSecrets::load(env.secrets.as_ref(), new_guid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.amt_password.unwrap().expose(), "Amt-Pass1!");
    let (r, _) = ctl(
        &ep,
        "acme",
        &["devices", "update", new_guid, "--hostname", "lab-9"],
    )
    .await;
    r.unwrap();
    let (r, text) = ctl(&ep, "acme", &["devices", "show", new_guid, "--json"]).await;
    r.unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (d["hostname"].as_str(), d["tags"][0].as_str()),
        (Some("lab-9"), Some("lab"))
    );
    ctl(&ep, "acme", &["devices", "remove", new_guid])
        .await
        .0
        .unwrap();
    let (r, _) = ctl(&ep, "acme", &["devices", "show", new_guid]).await;
    assert!(r.unwrap_err().starts_with("NOT_FOUND:"));

    // Device commands.
    let (r, text) = ctl(&ep, "acme", &["power", "state", &guid, "--json"]).await;
    r.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["power_state"],
        2,
        "{text}"
    );
    ctl(&ep, "acme", &["power", "action", &guid, "off"])
        .await
        .0
        .unwrap();
    assert_eq!(fleet.device(&guid).unwrap().power_state(), 8);
    let g1 = fleet.identities()[1].guid.clone();
    let (r, text) = ctl(&ep, "acme", &["power", "state", &guid, &g1]).await;
    r.unwrap();
    assert!(text.contains("off") && text.contains("on"), "{text}");
    for args in [
        vec!["version", guid.as_str()],
        vec!["settings", guid.as_str()],
        vec!["hardware", guid.as_str()],
        vec!["features", "show", guid.as_str()],
        vec!["logs", "events", guid.as_str(), "--max", "5"],
        vec!["logs", "audit", guid.as_str()],
        vec!["alarms", "list", guid.as_str()],
        vec!["power", "capabilities", guid.as_str()],
    ] {
        let (r, text) = ctl(&ep, "acme", &args).await;
        assert!(r.is_ok(), "{args:?}: {r:?}");
        assert!(!text.trim().is_empty(), "{args:?} printed nothing");
    }
    let (r, text) = ctl(&ep, "acme", &["version", &guid]).await;
    r.unwrap();
    assert!(text.contains("15.0.23"), "{text}");
    ctl(
        &ep,
        "acme",
        &[
            "alarms",
            "add",
            &guid,
            "nightly",
            "--start",
            "2099-01-01T02:00:00Z",
            "--interval-minutes",
            "1440",
        ],
    )
    .await
    .0
    .unwrap();
    assert_eq!(fleet.device(&guid).unwrap().alarms_len(), 1);
    ctl(&ep, "acme", &["consent", "start", &guid])
        .await
        .0
        .unwrap();
    let code = fleet.device(&guid).unwrap().consent_code().unwrap();
    ctl(&ep, "acme", &["consent", "send", &guid, &code])
        .await
        .0
        .unwrap();

    // Errors are one line with the code; another tenant sees nothing.
    let (r, _) = ctl(&ep, "evil", &["power", "state", &guid]).await;
    assert!(r.unwrap_err().starts_with("NOT_FOUND:"));
    let (r, _) = ctl(
        &ep,
        "acme",
        &["power", "state", "00000000-0000-0000-0000-000000000001"],
    )
    .await;
    assert!(r.unwrap_err().starts_with("NOT_FOUND:"));

    cmd.stop().await;
    fleet.stop().await;
    env.cleanup().await;
}
