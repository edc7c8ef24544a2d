//! Every DeviceService feature end to end against simulated AMT devices: gRPC →
//! mps-command → NATS → cira-ingress → APF → the simulator's WS-Man model, and the device
//! state the simulator shows afterwards.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::{Duration, Instant};

use homeport_amt_sim::{Fault, SimConfig};
use homeport_proto::device::v1 as pb;
use homeport_tests::command::{CommandSetup, Devices};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// The shared deployment plus a DeviceService client of tenant "acme".
struct Setup {
    inner: CommandSetup,
    api: Devices,
}

impl std::ops::Deref for Setup {
    type Target = CommandSetup;
    fn deref(&self) -> &CommandSetup {
        &self.inner
    }
}

impl Setup {
    async fn with(
        label: &str,
        devices: u64,
        seed: u64,
        tweak: impl FnOnce(&mut SimConfig),
    ) -> Setup {
        let inner = CommandSetup::start(label, devices, seed, "acme", tweak).await;
        let api = inner.cmd.devices("acme").await;
        Setup { inner, api }
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

fn dref(guid: &str) -> pb::DeviceRef {
    pb::DeviceRef {
        guid: guid.to_string(),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_state_actions_boot_options_and_capabilities() {
    let mut s = Setup::with("feapower", 3, 41, |_| {}).await;
    let g = s.guid(0);
    let device = s.fleet.device(&g).unwrap();
    let st = s.api.get_power_state(dref(&g)).await.unwrap().into_inner();
    assert_eq!((st.power_state, st.power_state_text.as_str()), (2, "on"));
    assert!(st.available_transitions.contains(&8), "{st:?}");

    let off = s
        .api
        .power_action(pb::PowerActionRequest {
            guid: g.clone(),
            action: 8,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.return_value, 0);
    assert_eq!(device.power_state(), 8);
    let st = s.api.get_power_state(dref(&g)).await.unwrap().into_inner();
    assert_eq!(
        (st.power_state, st.available_transitions.as_slice()),
        (8, &[2][..])
    );
    // Reset while off is not a valid transition: AMT's ReturnValue 2, not an RPC error.
    let reset = s
        .api
        .power_action(pb::PowerActionRequest {
            guid: g.clone(),
            action: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.return_value, 2);
    assert_eq!(device.power_state(), 8);
    let e = s
        .api
        .power_action(pb::PowerActionRequest {
            guid: g.clone(),
            action: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Power up to BIOS setup: boot settings, role, order, then power on.
    let audit_before = device.audit_len();
    let bios = s
        .api
        .set_boot_options(pb::BootOptionsRequest {
            guid: g.clone(),
            action: 100,
            use_sol: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bios.return_value, 0);
    assert_eq!(device.power_state(), 2);
    assert!(
        device.audit_len() >= audit_before + 2,
        "boot options and power up are audited"
    );
    let e = s
        .api
        .set_boot_options(pb::BootOptionsRequest {
            guid: g.clone(),
            action: 7,
            use_sol: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Reset to PXE on a running device.
    let pxe = s
        .api
        .set_boot_options(pb::BootOptionsRequest {
            guid: g.clone(),
            action: 400,
            use_sol: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pxe.return_value, 0);

    let caps = s
        .api
        .get_power_capabilities(dref(&g))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.actions.get("Power up"), Some(&2));
    assert_eq!(caps.actions.get("Reset to PXE"), Some(&400));
    assert_eq!(
        caps.actions.get("Soft-off"),
        Some(&12),
        "AMT 15 > 9 offers graceful actions"
    );

    // Bulk: every device gets an entry, failures included.
    let unknown = "00000000-0000-0000-0000-0000000000aa".to_string();
    let bulk = s
        .api
        .get_power_states(pb::GetPowerStatesRequest {
            guids: vec![s.guid(1), s.guid(2), unknown.clone(), g.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bulk.entries.len(), 4);
    for e in &bulk.entries[..2] {
        assert_eq!(e.state.as_ref().map(|s| s.power_state), Some(2), "{e:?}");
    }
    assert_eq!(
        (
            bulk.entries[2].guid.as_str(),
            bulk.entries[2].error_code.as_str()
        ),
        (unknown.as_str(), "NOT_FOUND")
    );
    assert!(bulk.entries[3].state.is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_settings_and_hardware() {
    let mut s = Setup::with("feainfo", 1, 42, |_| {}).await;
    let g = s.guid(0);
    let id = s.fleet.identities()[0].clone();
    let v = s.api.get_version(dref(&g)).await.unwrap().into_inner();
    assert_eq!((v.amt.as_str(), v.major), ("15.0.23", 15));
    assert_eq!((v.provisioning_mode, v.provisioning_state), (1, 2));
    assert!(v.software_identity.contains_key("Flash"), "{v:?}");
    let gs = s
        .api
        .get_general_settings(dref(&g))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gs.digest_realm, id.realm);
    let hw = s
        .api
        .get_hardware_info(dref(&g))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !hw.manufacturer.is_empty() && !hw.model.is_empty(),
        "{hw:?}"
    );
    assert_eq!(hw.platform_guid.len(), 32);
    assert!(!hw.board.as_ref().unwrap().model.is_empty());
    assert!(hw.bios.as_ref().unwrap().release_date.contains('T'));
    assert!(
        !hw.processors.is_empty() && !hw.processors[0].brand.is_empty(),
        "{:?}",
        hw.processors
    );
    assert!(
        hw.memory.len() >= 2 && hw.memory.iter().all(|m| m.capacity_bytes > 0),
        "{:?}",
        hw.memory
    );
    assert!(
        !hw.storage.is_empty() && hw.storage[0].max_media_size_kb > 0,
        "{:?}",
        hw.storage
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_and_user_consent() {
    // Device 0 is a SKU without KVM (index 0 is a multiple of every no_kvm_every).
    let mut s = Setup::with("feafeat", 2, 43, |c| c.no_kvm_every = 1000).await;
    let (plain, kvm) = (s.guid(0), s.guid(1));
    let f = s.api.get_features(dref(&kvm)).await.unwrap().into_inner();
    assert!(f.kvm_available && f.kvm && f.sol && f.ider, "{f:?}");
    let set = s
        .api
        .set_features(pb::SetFeaturesRequest {
            guid: kvm.clone(),
            user_consent: "kvm".into(),
            enable_kvm: false,
            enable_sol: true,
            enable_ider: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (set.user_consent.as_str(), set.kvm, set.sol, set.ider),
        ("kvm", false, true, false),
        "{set:?}"
    );
    let again = s.api.get_features(dref(&kvm)).await.unwrap().into_inner();
    assert_eq!(again, set, "the device keeps the new settings");
    let e = s
        .api
        .set_features(pb::SetFeaturesRequest {
            guid: kvm.clone(),
            user_consent: "sometimes".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let nokvm = s.api.get_features(dref(&plain)).await.unwrap().into_inner();
    assert!(!nokvm.kvm_available && !nokvm.kvm, "{nokvm:?}");
    let e = s
        .api
        .set_features(pb::SetFeaturesRequest {
            guid: plain.clone(),
            user_consent: "none".into(),
            enable_kvm: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Consent: start, read the code off the "screen", a wrong code, the right one.
    let device = s.fleet.device(&kvm).unwrap();
    let start = s
        .api
        .start_user_consent(dref(&kvm))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(start.return_value, 0);
    let code = device.consent_code().expect("code on screen");
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let r = s
        .api
        .send_user_consent_code(pb::SendUserConsentCodeRequest {
            guid: kvm.clone(),
            code: wrong,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.return_value, 2066);
    let r = s
        .api
        .send_user_consent_code(pb::SendUserConsentCodeRequest {
            guid: kvm.clone(),
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.return_value, 0);
    assert_eq!(device.opt_in_state(), 3);
    let e = s
        .api
        .send_user_consent_code(pb::SendUserConsentCodeRequest {
            guid: kvm.clone(),
            code: "12".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let r = s
        .api
        .cancel_user_consent(dref(&kvm))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.return_value, 0);
    assert_eq!(device.opt_in_state(), 0);
    // The code never reaches the events.
    let events = s.env.wait_events("SendUserConsentCode", 3, WAIT).await;
    for (_, ev) in events {
        assert!(!format!("{ev:?}").contains(&code));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_audit_log_and_alarms() {
    let mut s = Setup::with("fealogs", 1, 44, |_| {}).await;
    let g = s.guid(0);
    let device = s.fleet.device(&g).unwrap();
    let log = s
        .api
        .get_event_log(pb::GetEventLogRequest {
            guid: g.clone(),
            max_records: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.records.len(), device.event_len(), "every record");
    assert!(log.no_more_records);
    assert!(
        log.records.windows(2).all(|w| w[0].time >= w[1].time),
        "newest first"
    );
    assert!(
        log.records.iter().any(|r| r.entity == "BIOS"),
        "{:?}",
        log.records.first()
    );
    let few = s
        .api
        .get_event_log(pb::GetEventLogRequest {
            guid: g.clone(),
            max_records: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(few.records.len(), 3);

    s.api
        .power_action(pb::PowerActionRequest {
            guid: g.clone(),
            action: 10,
        })
        .await
        .unwrap();
    let audit = s
        .api
        .get_audit_log(pb::GetAuditLogRequest {
            guid: g.clone(),
            start_index: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.total_records as usize, device.audit_len());
    assert_eq!(audit.records[0].event_name, "Provisioning Started");
    let last = s
        .api
        .get_audit_log(pb::GetAuditLogRequest {
            guid: g.clone(),
            start_index: audit.total_records,
        })
        .await
        .unwrap()
        .into_inner();
    let reset = last.records.last().unwrap();
    assert_eq!(
        (reset.event_name.as_str(), reset.initiator.as_str()),
        ("Performed Reset", "admin")
    );
    let e = s
        .api
        .get_audit_log(pb::GetAuditLogRequest {
            guid: g.clone(),
            start_index: audit.total_records + 5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "start past the end: ReturnValue 35"
    );

    assert!(s
        .api
        .list_alarms(dref(&g))
        .await
        .unwrap()
        .into_inner()
        .alarms
        .is_empty());
    let start = now_unix() + 3600;
    let a = s
        .api
        .add_alarm(pb::AddAlarmRequest {
            guid: g.clone(),
            name: "wake-1".into(),
            start_time: start + 17,
            interval_minutes: 1440,
            delete_on_completion: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.instance_id, "wake-1");
    assert_eq!(
        a.start_time % 60,
        0,
        "seconds are rounded down to the minute"
    );
    let list = s.api.list_alarms(dref(&g)).await.unwrap().into_inner();
    assert_eq!(list.alarms.len(), 1);
    assert_eq!(
        (list.alarms[0].interval_minutes, list.alarms[0].start_time),
        (1440, a.start_time)
    );
    for i in 2..=5 {
        s.api
            .add_alarm(pb::AddAlarmRequest {
                guid: g.clone(),
                name: format!("wake-{i}"),
                start_time: start,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let e = s
        .api
        .add_alarm(pb::AddAlarmRequest {
            guid: g.clone(),
            name: "wake-6".into(),
            start_time: start,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "AMT keeps at most 5 alarms: {e:?}"
    );
    assert!(e.message().contains("QuotaLimit"), "{e:?}");
    let e = s
        .api
        .add_alarm(pb::AddAlarmRequest {
            guid: g.clone(),
            name: "past".into(),
            start_time: now_unix() - 60,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s.api
        .delete_alarm(pb::DeleteAlarmRequest {
            guid: g.clone(),
            instance_id: "wake-3".into(),
        })
        .await
        .unwrap();
    assert_eq!(device.alarms_len(), 4);
    let e = s
        .api
        .delete_alarm(pb::DeleteAlarmRequest {
            guid: g.clone(),
            instance_id: "wake-3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivate_unprovisions_and_removes_the_device() {
    let mut s = Setup::with("feadeact", 2, 45, |_| {}).await;
    let g = s.guid(0);
    let device = s.fleet.device(&g).unwrap();
    let r = s.api.deactivate(dref(&g)).await.unwrap().into_inner();
    assert_eq!(r.return_value, 0);
    assert!(!device.is_provisioned());
    let mut reg = s.cmd.registry("acme").await;
    assert_eq!(
        reg.get_device(dref(&g)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(s
        .env
        .secrets
        .get(&homeport_secrets::device_path(&g))
        .await
        .unwrap()
        .is_none());
    // The device drops its CIRA session; the other one is untouched.
    s.env
        .wait_presence("deactivated device gone", WAIT, |p| {
            p.iter().all(|(k, _)| k != &g) && p.len() == 1
        })
        .await;
    assert_eq!(
        s.api.get_power_state(dref(&g)).await.unwrap_err().code(),
        Code::NotFound
    );
    s.api.get_power_state(dref(&s.guid(1))).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_and_hostile_devices_fail_cleanly() {
    let mut s = Setup::with("feabad", 1, 46, |_| {}).await;
    let good = s.guid(0);
    // Two misbehaving devices on the same ingress.
    let mut vanish = s
        .env
        .enrolled_fleet(s.ingress.local_addr(), 1, 47, "acme")
        .await;
    vanish.faults = vec![(Fault::VanishMidCall, 1.0)];
    let vanish = s.env.start_connected(vanish, WAIT).await;
    let mut hostile = s
        .env
        .enrolled_fleet(s.ingress.local_addr(), 1, 48, "acme")
        .await;
    hostile.faults = vec![(Fault::HostileWsman, 1.0)];
    let hostile = s.env.start_connected(hostile, WAIT).await;
    s.env
        .wait_presence("3 devices", WAIT, |p| p.len() == 3)
        .await;

    let started = Instant::now();
    let e = s
        .api
        .get_power_state(dref(&vanish.identities()[0].guid))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Aborted | Code::Unavailable),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the exchange deadline: {:?}",
        started.elapsed()
    );

    let e = s
        .api
        .get_hardware_info(dref(&hostile.identities()[0].guid))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    // The service is unharmed.
    assert_eq!(
        s.api
            .get_power_state(dref(&good))
            .await
            .unwrap()
            .into_inner()
            .power_state,
        2
    );
    vanish.stop().await;
    hostile.stop().await;
    s.stop().await;
}
