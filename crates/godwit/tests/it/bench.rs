use std::process::Command;

/// The shape of `godwit bench channel --json` (figures are printed, never asserted: the
/// machine is shared and noisy).
#[test]
fn bench_channel_json_has_every_record_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(["bench", "channel", "--json", "--seconds", "0.05"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let sizes: Vec<u64> = results
        .iter()
        .map(|r| r["record_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [16 << 10, 64 << 10, 256 << 10, 1 << 20]);
    for r in results {
        for field in ["channel_mib_s", "primitive_mib_s", "ratio"] {
            let x = r[field].as_f64().unwrap_or(-1.0);
            assert!(x.is_finite() && x > 0.0, "{field} = {x} in {r}");
        }
        let ratio = r["channel_mib_s"].as_f64().unwrap() / r["primitive_mib_s"].as_f64().unwrap();
        assert!((ratio - r["ratio"].as_f64().unwrap()).abs() < 1e-9);
    }
}
