//! `godwit demo`: the single-host part of the method, end to end on the emulated hardware.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use godwit_enclave::examples::COUNTER;
use godwit_hw::{Manufacturer, SoftHardware};
use godwit_monitor::{BlobStore, MemoryBlobStore, Monitor, MonitorError, sm_measurement};
use godwit_wire::HostId;

/// Options of `godwit demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Print one JSON object instead of the narrative.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize, Default)]
struct Checks {
    state_continued: bool,
    sealed_blob_is_ciphertext: bool,
    rollback_refused: bool,
    limit_refused: bool,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let say = |line: &str| {
        if !args.json {
            println!("{line}");
        }
    };
    let manufacturer = Manufacturer::generate();
    let identity = manufacturer.provision(HostId::new("host1")?);
    let hw = Arc::new(SoftHardware::boot(identity, sm_measurement()));
    let blobs = Arc::new(MemoryBlobStore::default());
    let config = godwit_monitor::MonitorConfig {
        policy: godwit_attest::Policy {
            roots: vec![manufacturer.root()],
            allowed_sm: vec![sm_measurement()],
            allowed_hosts: None,
        },
        timeouts: godwit_proto::TimeoutConfig::default(),
        memory_budget_bytes: u64::MAX,
    };
    let mut sm = Monitor::new(hw, blobs.clone(), config)?;
    let mut ledger = godwit_proto::Ledger::new();
    let mut settle = |sm: &mut Monitor| {
        while let Some(action) = sm.poll_action() {
            if let godwit_monitor::Action::Store { request, op } = action {
                let outcome = ledger.apply(&op);
                sm.handle_store_reply(request, godwit_proto::StoreReply::Outcome(outcome));
            }
        }
    };
    say(&format!(
        "host1: security monitor {} booted on emulated hardware",
        sm_measurement().short()
    ));

    let manifest = COUNTER.manifest();
    let id = sm
        .create(&COUNTER.module(), manifest.clone())
        .context("deploy counter")?;
    settle(&mut sm);
    say(&format!(
        "deployed counter as enclave {id} (limit {} per host)",
        manifest.max_instances_per_host
    ));
    let mut checks = Checks::default();

    let mut last = String::new();
    for _ in 0..3 {
        last = String::from_utf8_lossy(&sm.call(id, "incr", b"")?).into_owned();
    }
    say(&format!("incr x3 -> {last}"));
    sm.call(id, "persist", b"")?;
    let blob = blobs.get(id, "count")?.context("sealed blob missing")?;
    checks.sealed_blob_is_ciphertext = !blob.windows(8).any(|w| w == 3u64.to_le_bytes());
    say(&format!(
        "persist -> sealed blob of {} bytes handed to the host (ciphertext only)",
        blob.len()
    ));
    sm.call(id, "incr", b"")?;
    let restored = String::from_utf8_lossy(&sm.call(id, "restore", b"")?).into_owned();
    checks.state_continued = restored == "3";
    say(&format!(
        "incr, then restore -> {restored} (the sealed value)"
    ));

    sm.call(id, "persist", b"")?;
    sm.call(id, "incr", b"")?;
    sm.call(id, "persist", b"")?;
    blobs.put(id, "count", &blob)?;
    let rollback = sm.call(id, "restore", b"");
    let refusal = sm.last_refusal(id)?;
    checks.rollback_refused = rollback.is_err() && refusal.is_some();
    say(&format!(
        "host hands back the first blob -> refused: {}",
        refusal.map_or_else(|| "NOT REFUSED".to_owned(), |e| e.to_string())
    ));

    for _ in 1..manifest.max_instances_per_host {
        sm.create(&COUNTER.module(), manifest.clone())?;
        settle(&mut sm);
    }
    let over = sm.create(&COUNTER.module(), manifest.clone());
    checks.limit_refused = matches!(over, Err(MonitorError::InstanceLimit { .. }));
    if let Err(e) = &over {
        say(&format!("deploy one more counter -> refused: {e}"));
    }

    let ok = checks.state_continued
        && checks.sealed_blob_is_ciphertext
        && checks.rollback_refused
        && checks.limit_refused;
    if args.json {
        println!("{}", serde_json::json!({ "ok": ok, "checks": checks }));
    } else {
        say(if ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
