//! The parser and the typed models against recorded AMT responses (`test_data/amt-responses`,
//! Apache-2.0, see its NOTICE.md).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};

use homeport_wsman::amt::{self, features, hardware, logs, power, settings};
use homeport_wsman::response::{self, Response, ResponseError};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/amt-responses")
}

fn load(rel: &str) -> Response {
    let bytes = std::fs::read(data().join(rel)).unwrap();
    response::parse(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "xml") {
            out.push(p);
        }
    }
}

#[test]
fn every_recorded_response_parses_or_is_a_typed_fault() {
    let mut all = Vec::new();
    files(&data(), &mut all);
    assert!(
        all.len() >= 200,
        "expected the recorded set, found {}",
        all.len()
    );
    let mut faults = 0;
    for p in &all {
        let bytes = std::fs::read(p).unwrap();
        match response::parse(&bytes) {
            Ok(r) => assert!(r.action.starts_with("http"), "{p:?}: no Action"),
            Err(ResponseError::Fault(f)) => {
                assert!(!f.subcode.is_empty(), "{p:?}: fault without subcode");
                faults += 1;
            }
            Err(e) => panic!("{p:?}: {e}"),
        }
    }
    assert!(faults < all.len() / 10);
}

#[test]
fn power_state_from_the_association() {
    let r = load("cim/service/availabletoelement/pull.xml");
    let page = amt::pull_page(&r).unwrap();
    assert!(page.end_of_sequence);
    let s = power::power_status(&page).unwrap();
    assert_eq!(s.power_state, 2);
    assert_eq!(s.available_transitions, [10, 8, 5, 11, 4, 7, 14, 12]);
    let r = load("cim/power/managementservice/requestpowerstatechange.xml");
    let (_, rv) = r.method_output("RequestPowerStateChange").unwrap();
    assert_eq!(rv, 0);
}

#[test]
fn version_and_settings() {
    let r = load("cim/software/identity/pull.xml");
    let page = amt::pull_page(&r).unwrap();
    let ids = settings::software_identities(&page.items);
    assert!(ids.len() >= 5, "{ids:?}");
    let (v, major) = settings::amt_version(&ids).unwrap();
    assert!(major >= 11, "{v}");
    let g = settings::general_settings(&load("amt/general/get.xml")).unwrap();
    assert!(g.digest_realm.starts_with("Digest:"), "{g:?}");
    assert!(g.properties.get("InstanceID").is_some());
    let p = settings::provisioning(&load("amt/setupandconfiguration/get.xml")).unwrap();
    assert_eq!(p.state, 2);
    let r = load("amt/setupandconfiguration/unprovision.xml");
    assert_eq!(r.method_output("Unprovision").unwrap().1, 0);
}

#[test]
fn hardware_classes() {
    let c = hardware::chassis(&load("cim/chassis/get.xml")).unwrap();
    assert!(!c.manufacturer.is_empty());
    let b = hardware::board(&load("cim/card/get.xml")).unwrap();
    assert!(!b.model.is_empty());
    let bios = hardware::bios(&load("cim/bios/element/get.xml")).unwrap();
    assert!(
        !bios.version.is_empty() && bios.release_date.contains('T'),
        "{bios:?}"
    );
    let r = load("cim/physical/processor/pull.xml");
    let cpus = hardware::processors(&amt::pull_page(&r).unwrap().items).unwrap();
    assert!(!cpus.is_empty() && cpus[0].max_clock_mhz > 0, "{cpus:?}");
    let r = load("cim/physical/memory/pull.xml");
    let mem = hardware::memory(&amt::pull_page(&r).unwrap().items).unwrap();
    assert!(mem.iter().all(|m| m.capacity_bytes > 0), "{mem:?}");
    let media = load("cim/mediaaccess/pull.xml");
    let pkgs = load("cim/physical/package/pull.xml");
    let disks = hardware::storage(
        &amt::pull_page(&media).unwrap().items,
        &amt::pull_page(&pkgs).unwrap().items,
    )
    .unwrap();
    assert!(
        !disks.is_empty() && disks[0].max_media_size_kb > 0,
        "{disks:?}"
    );
}

#[test]
fn features_and_consent() {
    let red = features::redirection(&load("amt/redirectionservice/get.xml")).unwrap();
    assert!(red.properties.get("ListenerEnabled").is_some());
    features::kvm_enabled(&load("cim/kvm/get.xml")).unwrap();
    let o = features::opt_in(&load("ips/optin/get.xml")).unwrap();
    assert!(matches!(o.required, 0 | 1 | 4_294_967_295));
    for (file, method) in [
        ("ips/optin/startoptin.xml", "StartOptIn"),
        ("ips/optin/sendoptincode.xml", "SendOptInCode"),
        ("ips/optin/canceloptin.xml", "CancelOptIn"),
    ] {
        load(file).method_output(method).unwrap();
    }
}

#[test]
fn logs() {
    let (page, rv) = logs::event_page(&load("amt/messagelog/getrecords.xml")).unwrap();
    assert_eq!(rv, 0);
    assert!(!page.records.is_empty());
    let (total, records, rv) = logs::audit_page(&load("amt/auditlog/readrecords.xml")).unwrap();
    assert_eq!((total, rv), (2, 0));
    assert_eq!(records[0].event_name(), "Firmware Updated");
}

#[test]
fn alarms() {
    let r = load("amt/alarmclock/addalarm.xml");
    let (out, rv) = r.method_output("AddAlarm").unwrap();
    assert_eq!(rv, 0);
    let _ = amt::alarms::added_alarm_id(out);
    // The go-wsman fixture carries placeholder values ("testdatetime"): a clean error, no panic.
    let r = load("ips/alarmclock/pull.xml");
    assert!(matches!(
        amt::alarms::alarms(&amt::pull_page(&r).unwrap().items),
        Err(ResponseError::Invalid { .. })
    ));
}
