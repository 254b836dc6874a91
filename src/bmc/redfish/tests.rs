//! The Redfish types against recorded payloads (tests/fixtures/redfish): DMTF's mockup and
//! the shapes iDRAC and iLO answer.

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/redfish/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_dmtf_mockup_system() {
    assert_eq!(
        members(&fixture("dmtf-systems.json")).unwrap(),
        ["/redfish/v1/Systems/437XR1138R2"]
    );
    let s = System::from_json("/x", &fixture("dmtf-rackmount-system.json")).unwrap();
    assert_eq!(s.path, "/redfish/v1/Systems/437XR1138R2");
    assert_eq!(s.power, PowerState::On);
    assert_eq!(
        s.reset_target,
        "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset"
    );
    assert_eq!(s.boot.target.as_deref(), Some("Pxe"));
    assert_eq!(s.boot.enabled.as_deref(), Some("Once"));
    assert_eq!(s.boot.mode.as_deref(), Some("UEFI"));
    assert_eq!(s.manufacturer.as_deref(), Some("Contoso"));
    for a in [
        PowerAction::On,
        PowerAction::ForceOff,
        PowerAction::GracefulShutdown,
        PowerAction::ForceRestart,
    ] {
        assert_eq!(s.reset_type_for(a), Some(a.reset_type()));
    }
    assert_eq!(
        s.pxe_once_patch(),
        json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
    );
}

#[test]
fn the_idrac_system() {
    let s = System::from_json("/x", &fixture("idrac-system.json")).unwrap();
    assert_eq!(s.path, "/redfish/v1/Systems/System.Embedded.1");
    assert_eq!(s.power, PowerState::Off);
    assert_eq!(s.boot.target.as_deref(), Some("None"));
    assert!(s.boot.allowed_targets.iter().any(|t| t == "Pxe"));
    assert_eq!(s.reset_type_for(PowerAction::On), Some("On"));
    assert_eq!(
        s.reset_type_for(PowerAction::GracefulShutdown),
        Some("GracefulShutdown")
    );
    assert_eq!(s.model.as_deref(), Some("PowerEdge R640"));
}

#[test]
fn the_ilo_system_with_trailing_slashes_and_no_graceful_shutdown() {
    let s = System::from_json("/x", &fixture("ilo-system.json")).unwrap();
    assert_eq!(s.path, "/redfish/v1/Systems/1", "trailing slash dropped");
    assert_eq!(
        s.reset_target, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset/",
        "the action target is posted as given"
    );
    assert_eq!(s.reset_type_for(PowerAction::GracefulShutdown), None);
    assert_eq!(s.reset_type_for(PowerAction::ForceOff), Some("ForceOff"));
    // Legacy mode reported: the override asks for UEFI (the mode is a property it has).
    assert_eq!(
        s.pxe_once_patch()["Boot"]["BootSourceOverrideMode"],
        json!("UEFI")
    );
}

/// A system that lists only `PushPowerButton` and `PowerCycle` is powered on and restarted
/// with those; one that says nothing is sent the plain types; a system without a Boot mode
/// gets no mode in the override (BMCs refuse unknown properties).
#[test]
fn reset_types_fall_back_to_what_the_system_allows() {
    let s = System::from_json(
        "/redfish/v1/Systems/a",
        br##"{"PowerState": "Off", "Actions": {"#ComputerSystem.Reset": {"ResetType@Redfish.AllowableValues": ["PushPowerButton", "PowerCycle", "ForceOff"]}}}"##,
    )
    .unwrap();
    assert_eq!(s.path, "/redfish/v1/Systems/a");
    assert_eq!(
        s.reset_target,
        "/redfish/v1/Systems/a/Actions/ComputerSystem.Reset"
    );
    assert_eq!(s.reset_type_for(PowerAction::On), Some("PushPowerButton"));
    assert_eq!(
        s.reset_type_for(PowerAction::ForceRestart),
        Some("PowerCycle")
    );
    assert_eq!(s.reset_type_for(PowerAction::GracefulShutdown), None);
    let quiet =
        System::from_json("/redfish/v1/Systems/b", br#"{"PowerState": "PoweringOn"}"#).unwrap();
    assert_eq!(quiet.power, PowerState::PoweringOn);
    assert_eq!(quiet.reset_type_for(PowerAction::On), Some("On"));
    assert!(
        quiet.pxe_once_patch()["Boot"]
            .get("BootSourceOverrideMode")
            .is_none()
    );
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    for body in [
        &b""[..],
        b"<html>500</html>",
        b"[]",
        b"{\"PowerState\": 3}",
        b"{\"Members\": \"x\"}",
    ] {
        let _ = System::from_json("/x", body);
        let _ = members(body);
        let _ = error_message(body);
    }
    assert!(System::from_json("/x", b"not json").is_err());
    assert!(members(b"{\"Members\": [{\"no\": 1}]}").is_err());
}

#[test]
fn redfish_error_messages() {
    let m = error_message(&fixture("error-extended.json")).unwrap();
    assert!(
        m.contains("A general error has occurred")
            && m.contains("The value Pxee for the property BootSourceOverrideTarget"),
        "{m}"
    );
    assert_eq!(
        error_message(br#"{"error": {"message": "Unauthorized"}}"#).as_deref(),
        Some("Unauthorized")
    );
    assert_eq!(error_message(b"{}"), None);
}

#[test]
fn endpoints_are_checked() {
    let ep = |url: &str| Endpoint {
        url: url.into(),
        user: "u".into(),
        password: "p".into(),
        ca_pem: None,
        insecure_tls: false,
        timeout: Duration::from_secs(1),
        auth: Default::default(),
    };
    assert!(Bmc::new(ep("https://10.0.5.21")).is_ok());
    assert!(Bmc::new(ep("http://127.0.0.1:8000")).is_ok());
    let err = Bmc::new(ep("ftp://10.0.5.21")).unwrap_err().to_string();
    assert!(err.contains("https://host"), "{err}");
    let err = Bmc::new(ep("10.0.5.21")).unwrap_err().to_string();
    assert!(err.contains("not a URL"), "{err}");
    let mut bad_ca = ep("https://10.0.5.21");
    bad_ca.ca_pem = Some(b"not a certificate".to_vec());
    let err = Bmc::new(bad_ca).unwrap_err().to_string();
    assert!(err.contains("ca_file"), "{err}");
}
