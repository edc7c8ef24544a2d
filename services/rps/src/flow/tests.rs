//! The flows driven against the simulator's firmware directly: no sockets, no clocks, every
//! WS-Man request answered by the same code a simulated device runs behind its rpc client.

use homeport_amt_sim::provision::{lsa_password, ProvisioningPki, SimDevice, LSA_USER};
use homeport_secrets::SecretString;

use super::activation::{AcmPlan, Activation, CiraPlan, Features, Plan};
use super::deactivation::Deactivation;
use super::maintenance::{IpConfig, Job, Maintenance};
use super::{Finish, Flow, Output};

const ROOT_PEM: &str = include_str!("testdata/root.pem");

fn root_der_b64() -> String {
    use base64::Engine as _;
    let cert = openssl::x509::X509::from_pem(ROOT_PEM.as_bytes()).expect("test root");
    base64::engine::general_purpose::STANDARD.encode(cert.to_der().expect("der"))
}

fn plan(dev: &SimDevice, mode: u8, user: &str, password: &str, amt: &str) -> Plan {
    Plan {
        guid: dev.guid().to_string(),
        current_mode: mode,
        user: user.into(),
        password: SecretString::new(password),
        amt_password: SecretString::new(amt),
        features: Features {
            kvm: true,
            sol: true,
            ider: false,
            consent: 4_294_967_295,
        },
        cira: Some(CiraPlan {
            address: "mps.example.com".into(),
            format: 201,
            port: 4433,
            username: "homeport1".into(),
            password: SecretString::new("Cira-Pass-1234"),
            common_name: String::new(),
            root_certificate: root_der_b64(),
            environment_domain: "8f1c0f6e-0000-4000-8000-000000000001.com".into(),
        }),
        acm: None,
        network: Some(super::activation::NetworkPlan {
            dhcp: true,
            ip_sync: true,
        }),
        wifi: Default::default(),
    }
}

/// Runs a flow to its end, answering effects with `effect`; returns the result and the
/// effects asked for, by name.
fn drive(
    flow: &mut dyn Flow,
    dev: &SimDevice,
    mut effect: impl FnMut(&super::Effect) -> Result<(), String>,
) -> (Finish, Vec<&'static str>) {
    let mut seen = Vec::new();
    let mut out = flow.start();
    for _ in 0..500 {
        out = match out {
            Output::Done(f) => return (f, seen),
            Output::Send(req) => {
                let answer = dev.answer(&req).expect("the firmware answers");
                flow.on_reply(&answer)
            }
            Output::Effect(e) => {
                seen.push(match e {
                    super::Effect::SaveSecrets { .. } => "save-secrets",
                    super::Effect::Register { .. } => "register",
                    super::Effect::Forget => "forget",
                    super::Effect::Refresh { .. } => "refresh",
                });
                let r = effect(&e);
                flow.on_effect(r)
            }
        };
    }
    panic!("the flow did not end in 500 steps");
}

#[test]
fn ccm_activation_configures_features_and_cira() {
    let dev = SimDevice::unprovisioned(11, 0);
    let lsa = lsa_password(&dev.id);
    let mut flow = Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!"));
    let (finish, effects) = drive(&mut flow, &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    assert_eq!(finish.outcome, "activated");
    assert_eq!(
        finish.status.status.as_deref(),
        Some("Client control mode.")
    );
    assert_eq!(finish.status.cira_connection.as_deref(), Some("Configured"));
    // Credentials are stored before the device takes them, the registry after.
    assert_eq!(effects, ["save-secrets", "register"]);
    assert_eq!(dev.control_mode(), 1);
    assert!(dev.admin_password_is("New-Amt-Pass1!"));
    assert_eq!(
        finish.status.network.as_deref(),
        Some("Wired Network Configured")
    );
    let (_, _, (dhcp, ip_sync, _)) = dev.maintained_state();
    assert!(dhcp && ip_sync, "DHCP profile: AMT on DHCP with IP sync");
    assert_eq!(
        dev.cira_target(),
        Some(("mps.example.com".into(), 4433, "homeport1".into()))
    );
    let (policies, outside) = dev.cira_policies();
    assert_eq!(policies, ["Periodic", "User Initiated"]);
    assert!(
        outside,
        "environment detection set, so the device keeps CIRA up"
    );
    let (kvm, redirection, consent) = dev.features();
    assert!(kvm);
    assert_eq!(redirection, 32768 + 2, "SOL on, IDER off");
    assert_eq!(consent, 4_294_967_295);
    // The first exchange meets the 401; the count stays well under the reference's 35-45.
    assert!(flow.exchanges() < 30, "{} exchanges", flow.exchanges());
}

#[test]
fn running_again_in_client_control_mode_completes_without_duplicates() {
    let dev = SimDevice::unprovisioned(11, 1);
    let lsa = lsa_password(&dev.id);
    let (first, _) = drive(
        &mut Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!")),
        &dev,
        |_| Ok(()),
    );
    assert!(first.ok);
    // As if the first run had been cut off after Setup: the client runs again with the
    // password, and every step after Setup is done again over what is there.
    let mut again = Activation::new(plan(&dev, 1, "admin", "New-Amt-Pass1!", "New-Amt-Pass1!"));
    let (second, effects) = drive(&mut again, &dev, |_| Ok(()));
    assert!(second.ok, "{second:?}");
    assert_eq!(
        second.status.status.as_deref(),
        Some("already enabled in client mode.")
    );
    assert_eq!(effects, ["save-secrets", "register"]);
    assert_eq!(dev.cira_policies().0.len(), 2);
    assert!(dev.cira_target().is_some());
}

#[test]
fn a_wrong_password_ends_with_the_reference_message() {
    let dev = SimDevice::unprovisioned(11, 2);
    let mut flow = Activation::new(plan(&dev, 0, LSA_USER, "not-the-lsa", "New-Amt-Pass1!"));
    let (finish, effects) = drive(&mut flow, &dev, |_| Ok(()));
    assert!(!finish.ok);
    assert!(
        finish
            .status
            .status
            .as_deref()
            .is_some_and(|s| s.contains("Unable to authenticate with AMT")),
        "{finish:?}"
    );
    assert!(effects.is_empty());
    assert_eq!(dev.control_mode(), 0);
}

#[test]
fn a_failed_credential_write_stops_before_setup() {
    let dev = SimDevice::unprovisioned(11, 3);
    let lsa = lsa_password(&dev.id);
    let mut flow = Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!"));
    let (finish, effects) = drive(&mut flow, &dev, |_| Err("secret store down".into()));
    assert!(!finish.ok);
    assert_eq!(effects, ["save-secrets"]);
    assert_eq!(dev.control_mode(), 0, "the device keeps its factory state");
}

#[test]
fn deactivation_returns_the_device_to_the_factory_state() {
    let dev = SimDevice::unprovisioned(11, 4);
    let lsa = lsa_password(&dev.id);
    let (done, _) = drive(
        &mut Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!")),
        &dev,
        |_| Ok(()),
    );
    assert!(done.ok);
    let mut flow = Deactivation::new(dev.guid(), "New-Amt-Pass1!", 1);
    let (finish, effects) = drive(&mut flow, &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    assert_eq!(finish.status.status.as_deref(), Some("Deactivated"));
    assert_eq!(effects, ["forget"]);
    assert_eq!(dev.control_mode(), 0);
    assert!(dev.cira_target().is_none());
    // A second deactivation meets a device that no longer knows the admin password.
    let (again, _) = drive(
        &mut Deactivation::new(dev.guid(), "New-Amt-Pass1!", 1),
        &dev,
        |_| Ok(()),
    );
    assert!(!again.ok);
}

fn acm_plan(dev: &SimDevice, mode: u8, user: &str, password: &str, pki: &ProvisioningPki) -> Plan {
    use base64::Engine as _;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let mut p = plan(dev, mode, user, password, "New-Amt-Pass1!");
    p.features.consent = 1;
    p.acm = Some(AcmPlan {
        chain: vec![b64(&pki.leaf_der), b64(&pki.root_der)],
        key: Some(pki.key.clone()),
        mc_nonce: [7; 20],
        mebx_password: Some(SecretString::new("Mebx-Pass-123!")),
    });
    p
}

fn pki() -> &'static ProvisioningPki {
    static PKI: std::sync::OnceLock<ProvisioningPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        ProvisioningPki::generate("provisioning.sim.homeport.test", "pfx-pass").expect("test PKI")
    })
}

#[test]
fn acm_activation_uploads_the_chain_signs_the_nonces_and_sets_the_mebx_password() {
    let mut dev = SimDevice::unprovisioned(12, 0);
    dev.trust_root(&pki().root_der);
    let lsa = lsa_password(&dev.id);
    let mut flow = Activation::new(acm_plan(&dev, 0, LSA_USER, &lsa, pki()));
    let (finish, effects) = drive(&mut flow, &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    assert_eq!(finish.status.status.as_deref(), Some("Admin control mode."));
    assert_eq!(finish.control_mode, "acm");
    assert_eq!(effects, ["save-secrets", "register"]);
    assert_eq!(dev.control_mode(), 2);
    assert!(dev.admin_password_is("New-Amt-Pass1!"));
    assert!(dev.mebx_set());
    assert_eq!(dev.features().2, 1, "ACM may relax consent to KVM only");
}

#[test]
fn a_root_the_device_does_not_trust_or_a_refused_admin_setup_fails_the_activation() {
    // The chain is refused at its root: nothing changes on the device.
    let dev = SimDevice::unprovisioned(12, 1);
    let lsa = lsa_password(&dev.id);
    let (finish, _) = drive(
        &mut Activation::new(acm_plan(&dev, 0, LSA_USER, &lsa, pki())),
        &dev,
        |_| Ok(()),
    );
    assert!(!finish.ok);
    assert!(
        finish
            .status
            .status
            .as_deref()
            .is_some_and(|s| s.contains("AddNextCertInChain")),
        "{finish:?}"
    );
    assert_eq!(dev.control_mode(), 0);

    let mut dev = SimDevice::unprovisioned(12, 2);
    dev.trust_root(&pki().root_der);
    dev.refuse_admin_setup();
    let lsa = lsa_password(&dev.id);
    let (finish, _) = drive(
        &mut Activation::new(acm_plan(&dev, 0, LSA_USER, &lsa, pki())),
        &dev,
        |_| Ok(()),
    );
    assert!(!finish.ok);
    assert!(
        finish
            .status
            .status
            .as_deref()
            .is_some_and(|s| s.contains("AdminSetup returned")),
        "{finish:?}"
    );
    assert_eq!(dev.control_mode(), 0);
}

#[test]
fn a_device_in_client_control_mode_is_upgraded_to_admin() {
    let mut dev = SimDevice::unprovisioned(12, 3);
    dev.trust_root(&pki().root_der);
    let lsa = lsa_password(&dev.id);
    let (ccm, _) = drive(
        &mut Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!")),
        &dev,
        |_| Ok(()),
    );
    assert!(ccm.ok);
    let mut upgrade = Activation::new(acm_plan(&dev, 1, "admin", "New-Amt-Pass1!", pki()));
    let (finish, _) = drive(&mut upgrade, &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    assert_eq!(
        finish.status.status.as_deref(),
        Some("Upgraded to admin control mode.")
    );
    assert_eq!(dev.control_mode(), 2);
    assert!(
        dev.admin_password_is("New-Amt-Pass1!"),
        "the password stays"
    );
}

fn activated(seed: u64, index: u64) -> SimDevice {
    let dev = SimDevice::unprovisioned(seed, index);
    let lsa = lsa_password(&dev.id);
    // The network is left as the factory set it, so syncip has something to do.
    let mut p = plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!");
    p.network = None;
    let (done, _) = drive(&mut Activation::new(p), &dev, |_| Ok(()));
    assert!(done.ok);
    dev
}

fn maintain(dev: &SimDevice, password: &str, job: Job) -> (Finish, Vec<&'static str>) {
    drive(
        &mut Maintenance::new(dev.guid(), password, 1, job),
        dev,
        |_| Ok(()),
    )
}

#[test]
fn maintenance_changes_the_password_clock_host_name_and_ip_sync() {
    let dev = activated(13, 0);
    let (f, effects) = maintain(
        &dev,
        "New-Amt-Pass1!",
        Job::ChangePassword {
            new: SecretString::new("Changed-Pass2@"),
            old: SecretString::new("New-Amt-Pass1!"),
            mps_password: None,
            mebx_password: None,
        },
    );
    assert!(f.ok, "{f:?}");
    assert_eq!(f.outcome, "maintained");
    assert_eq!(
        f.status.status.as_deref(),
        Some("changepassword completed successfully")
    );
    assert_eq!(
        effects,
        ["save-secrets"],
        "stored before the device takes it"
    );
    assert!(dev.admin_password_is("Changed-Pass2@"));

    dev.skew_clock(-3600);
    let now = chrono::Utc::now().timestamp();
    let (f, _) = maintain(&dev, "Changed-Pass2@", Job::SyncTime { now });
    assert!(f.ok, "{f:?}");
    assert!(
        dev.maintained_state().0.abs() <= 2,
        "AMT's clock follows the PC's"
    );

    let (f, effects) = maintain(
        &dev,
        "Changed-Pass2@",
        Job::SyncHostname("pc-renamed".into()),
    );
    assert!(f.ok, "{f:?}");
    assert_eq!(effects, ["refresh"]);
    assert_eq!(dev.maintained_state().1.as_deref(), Some("pc-renamed"));
    let (again, _) = maintain(
        &dev,
        "Changed-Pass2@",
        Job::SyncHostname("pc-renamed".into()),
    );
    assert!(!again.ok, "an unchanged host name is refused");

    let (f, _) = maintain(&dev, "Changed-Pass2@", Job::SyncIp(IpConfig::default()));
    assert!(f.ok, "{f:?}");
    assert!(dev.maintained_state().2 .1, "DHCP: IP sync turned on");
    let (again, _) = maintain(&dev, "Changed-Pass2@", Job::SyncIp(IpConfig::default()));
    assert!(!again.ok && again.status.status.unwrap_or_default().contains("already"));

    let mut info = Maintenance::new(dev.guid(), "Changed-Pass2@", 1, Job::SyncDeviceInfo);
    let (f, effects) = drive(&mut info, &dev, |_| Ok(()));
    assert!(f.ok);
    assert_eq!(effects, ["refresh"]);
    assert_eq!(info.exchanges(), 0, "no WS-Man");
}

/// Changes an activated device's password from New-Amt-Pass1! to Changed-Pass2@; returns the
/// finish, the effects, and the AMT passwords stored, in order.
fn change_password(dev: &SimDevice) -> (Finish, Vec<&'static str>, Vec<String>) {
    let mut saved = Vec::new();
    let mut flow = Maintenance::new(
        dev.guid(),
        "New-Amt-Pass1!",
        1,
        Job::ChangePassword {
            new: SecretString::new("Changed-Pass2@"),
            old: SecretString::new("New-Amt-Pass1!"),
            mps_password: None,
            mebx_password: None,
        },
    );
    let (f, effects) = drive(&mut flow, dev, |e| {
        if let super::Effect::SaveSecrets { amt_password, .. } = e {
            saved.push(amt_password.expose().to_string());
        }
        Ok(())
    });
    (f, effects, saved)
}

#[test]
fn a_new_password_is_stored_first_and_a_wrong_current_one_changes_nothing() {
    let dev = activated(13, 1);
    let (f, effects, saved) = change_password(&dev);
    assert!(f.ok, "{f:?}");
    assert_eq!(effects, ["save-secrets"]);
    assert_eq!(saved, ["Changed-Pass2@"]);
    // The device now has the new one: a change from a wrong current password fails before
    // anything is stored.
    let mut wrong = Maintenance::new(
        dev.guid(),
        "New-Amt-Pass1!",
        1,
        Job::ChangePassword {
            new: SecretString::new("Third-Pass3#"),
            old: SecretString::new("New-Amt-Pass1!"),
            mps_password: None,
            mebx_password: None,
        },
    );
    let (f, effects) = drive(&mut wrong, &dev, |_| Ok(()));
    assert!(!f.ok);
    assert!(effects.is_empty());
    assert!(dev.admin_password_is("Changed-Pass2@"));
}

#[test]
fn lost_and_cut_off_answers_are_recovered() {
    let dev = SimDevice::unprovisioned(14, 0);
    let lsa = lsa_password(&dev.id);
    let mut flow = Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!"));
    let (mut setup_lost, mut get_cut) = (false, false);
    let mut out = flow.start();
    let finish = loop {
        out = match out {
            Output::Done(f) => break f,
            Output::Effect(_) => flow.on_effect(Ok(())),
            Output::Send(req) => {
                let text = String::from_utf8_lossy(&req).to_string();
                let answer = dev.answer(&req).expect("the firmware answers");
                if text.contains("Setup_INPUT") && !setup_lost {
                    // The device applied Setup, but rpc's read deadline passed first.
                    setup_lost = true;
                    flow.on_timeout()
                } else if text.contains("transfer/Get")
                    && text.contains("AMT_RedirectionService")
                    && !get_cut
                {
                    get_cut = true;
                    flow.on_reply(&answer[..answer.len() / 2])
                } else {
                    flow.on_reply(&answer)
                }
            }
        };
    };
    assert!(
        setup_lost && get_cut,
        "both faults were injected: {finish:?}"
    );
    assert!(finish.ok, "{finish:?}");
    assert_eq!(dev.control_mode(), 1);
    assert!(dev.admin_password_is("New-Amt-Pass1!"));
}

#[test]
fn a_setup_whose_answer_is_lost_and_that_did_not_apply_is_reported_not_guessed() {
    let dev = SimDevice::unprovisioned(14, 1);
    let lsa = lsa_password(&dev.id);
    let mut flow = Activation::new(plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!"));
    let mut out = flow.start();
    let finish = loop {
        out = match out {
            Output::Done(f) => break f,
            Output::Effect(_) => flow.on_effect(Ok(())),
            Output::Send(req) => {
                if String::from_utf8_lossy(&req).contains("Setup_INPUT") {
                    // rpc's deadline passed and the request never reached the firmware.
                    flow.on_timeout()
                } else {
                    let answer = dev.answer(&req).expect("the firmware answers");
                    flow.on_reply(&answer)
                }
            }
        };
    };
    assert!(!finish.ok);
    assert!(
        finish
            .status
            .status
            .as_deref()
            .is_some_and(|s| s.contains("not applied")),
        "{finish:?}"
    );
    assert_eq!(dev.control_mode(), 0);
}

#[test]
fn a_static_profile_with_ip_sync_shares_the_os_address() {
    let dev = SimDevice::unprovisioned(15, 0);
    let lsa = lsa_password(&dev.id);
    let mut p = plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!");
    p.network = Some(super::activation::NetworkPlan {
        dhcp: false,
        ip_sync: true,
    });
    let (finish, _) = drive(&mut Activation::new(p), &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    let (_, _, (dhcp, ip_sync, ip)) = dev.maintained_state();
    assert!(!dhcp && ip_sync);
    assert!(!ip.is_empty());
}

#[test]
fn wifi_profiles_are_added_once_even_when_run_again() {
    use super::activation::{WifiPlan, WifiProfile};
    let dev = SimDevice::unprovisioned(16, 0);
    let lsa = lsa_password(&dev.id);
    let wifi = WifiPlan {
        local_sync: true,
        profiles: vec![
            WifiProfile {
                name: "office".into(),
                ssid: "Office".into(),
                authentication_method: 6,
                encryption_method: 4,
                priority: 1,
                passphrase: SecretString::new("correct horse battery"),
            },
            WifiProfile {
                name: "lab".into(),
                ssid: "Lab <5GHz>".into(),
                authentication_method: 6,
                encryption_method: 4,
                priority: 2,
                passphrase: SecretString::new("staple & battery"),
            },
        ],
    };
    let mut p = plan(&dev, 0, LSA_USER, &lsa, "New-Amt-Pass1!");
    p.wifi = wifi.clone();
    let (finish, _) = drive(&mut Activation::new(p), &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    assert_eq!(
        finish.status.network.as_deref(),
        Some("Wired Network Configured. Wireless Configured (2 profiles)")
    );
    let (profiles, sync, port) = dev.wifi();
    assert_eq!(
        profiles,
        [("Office".to_string(), 1), ("Lab <5GHz>".to_string(), 2)]
    );
    assert_eq!((sync, port), (3, 32769));
    // Running again (client control mode now) removes them first, then adds them again.
    let mut again = plan(&dev, 1, "admin", "New-Amt-Pass1!", "New-Amt-Pass1!");
    again.wifi = wifi;
    let (finish, _) = drive(&mut Activation::new(again), &dev, |_| Ok(()));
    assert!(finish.ok, "{finish:?}");
    assert_eq!(dev.wifi().0.len(), 2);
}

#[test]
fn a_password_change_the_device_refuses_puts_the_old_password_back_in_the_store() {
    let dev = activated(13, 2);
    dev.refuse_password_change();
    let (f, effects, saved) = change_password(&dev);
    assert!(!f.ok);
    assert!(
        f.status
            .status
            .as_deref()
            .is_some_and(|s| s.contains("unchanged")),
        "{f:?}"
    );
    assert_eq!(effects, ["save-secrets", "save-secrets"]);
    assert_eq!(
        saved,
        ["Changed-Pass2@", "New-Amt-Pass1!"],
        "new first, then the old back"
    );
    assert!(dev.admin_password_is("New-Amt-Pass1!"));
}
