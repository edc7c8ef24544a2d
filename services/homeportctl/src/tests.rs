//! Command-line tests that need no server: usage errors, refusals before connecting, the
//! token command. Whole commands against the real service are in tests/tests/homeportctl.rs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::Parser;
use serde_json::Value;

use super::Cli;
use crate::error::CliError;

fn run_argv(argv: &[&str]) -> (Result<(), CliError>, String) {
    crate::run_captured(argv)
}

#[test]
fn deactivate_without_yes_is_refused_before_connecting() {
    let (result, _) = run_argv(&[
        "homeportctl",
        "--endpoint",
        "http://127.0.0.1:1",
        "deactivate",
        "g",
    ]);
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.line().contains("--yes"), "{}", e.line());
}

#[test]
fn usage_errors_come_from_clap() {
    for argv in [
        &["homeportctl", "devices", "update", "g"][..],
        &["homeportctl", "power", "action", "g", "reboot"],
        &["homeportctl", "power", "state"],
        &["homeportctl", "devices", "list", "--status", "asleep"],
        &["homeportctl", "features", "set", "g"],
        &[
            "homeportctl",
            "alarms",
            "add",
            "g",
            "n",
            "--start",
            "tomorrow",
        ],
        &["homeportctl", "--timeout-secs", "0", "version", "g"],
    ] {
        let e = Cli::try_parse_from(argv).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{argv:?}");
    }
    let cli = Cli::try_parse_from(["homeportctl", "power", "action", "g", "soft-off", "--json"]);
    let cli = cli.unwrap();
    assert!(cli.global.json, "global flags work after the subcommand");
    assert!(format!("{cli:?}").contains("action: 12"));
}

#[test]
fn the_token_is_never_printed_by_debug() {
    let cli = Cli::try_parse_from(["homeportctl", "--token", "s3cr3t", "version", "g"]).unwrap();
    assert!(!format!("{cli:?}").contains("s3cr3t"));
}

#[test]
fn token_command_mints_the_documented_claims() {
    let file = std::env::temp_dir().join(format!("homeportctl-jwt-{}", std::process::id()));
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let path = file.to_str().unwrap();
    let (result, text) = run_argv(&[
        "homeportctl",
        "token",
        "--secret-file",
        path,
        "--tenant",
        "acme",
    ]);
    result.unwrap();
    let claims = text.trim().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["sub"], "homeportctl");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["aud"], "homeport");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);

    std::fs::write(&file, "too short\n").unwrap();
    let (result, _) = run_argv(&[
        "homeportctl",
        "token",
        "--secret-file",
        path,
        "--tenant",
        "acme",
    ]);
    std::fs::remove_file(&file).unwrap();
    assert!(result.unwrap_err().line().contains("at least 32 bytes"));
}
