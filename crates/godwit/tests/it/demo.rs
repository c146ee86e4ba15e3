use std::process::Command;

#[test]
fn demo_json_reports_every_check_true() {
    let out = Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let checks = v["checks"].as_object().unwrap();
    assert!(!checks.is_empty());
    for (name, value) in checks {
        assert_eq!(value, true, "check {name} failed: {v}");
    }
}
