//! The control API's server side (protocol in [`crate::control`]).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use godwit_monitor::{
    CallError, CallOutcome, EnclaveState, Event, MembershipChange, MigrationReport, Monitor,
    MonitorError,
};
use godwit_proto::{AbortReason, RefuseReason};
use godwit_wire::{EnclaveId, HostId, Manifest};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast::error::RecvError;

use crate::control::{Command, REQUEST_BYTES_MAX, Response, TOKEN_LINE_BYTES_MAX};
use crate::node::Inner;

/// How long a deploy waits for the store to register the enclave.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);

/// Binds the control socket and serves it. The socket is bound inside a fresh directory
/// only its owner can enter, set to 0600, and only then renamed into place: whatever the
/// umask, nobody else can ever connect to it.
pub(crate) async fn serve(inner: Arc<Inner>) -> Result<(), String> {
    let path = inner.cfg.control.socket.clone();
    let listener = bind_private(&path)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(Arc::clone(&inner), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

fn bind_private(path: &std::path::Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::DirBuilderExt;
    let at = |e: std::io::Error| format!("control socket {}: {e}", path.display());
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("control socket {}: not a file name", path.display()))?;
    let mut nonce = [0u8; 8];
    crate::node::host_random(&mut nonce).map_err(|e| at(std::io::Error::other(e)))?;
    let private = parent.join(format!(".godwit-socket-{}", hex::encode(nonce)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(at)?;
    let staged = private.join(name);
    let bound = UnixListener::bind(&staged).and_then(|l| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir(&private);
    bound.map_err(at)
}

async fn send(w: &mut OwnedWriteHalf, r: &Response) {
    if let Ok(mut line) = serde_json::to_vec(r) {
        line.push(b'\n');
        let _ = w.write_all(&line).await;
    }
}

fn err(code: &str, error: impl std::fmt::Display) -> Response {
    Response::Err {
        error: error.to_string(),
        code: code.to_owned(),
    }
}

async fn handle(inner: Arc<Inner>, stream: tokio::net::UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    // The token first, within a small bound: nothing else is read before it checks out.
    let mut token = Vec::new();
    let read = (&mut reader)
        .take(TOKEN_LINE_BYTES_MAX as u64)
        .read_until(b'\n', &mut token)
        .await;
    let token = token.strip_suffix(b"\n").unwrap_or(&token);
    if read.is_err() || !bool::from(token.ct_eq(inner.token.as_bytes())) {
        return send(&mut w, &err("unauthorized", "wrong control credentials")).await;
    }
    let mut line = Vec::new();
    if (&mut reader)
        .take(REQUEST_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)
        .await
        .is_err()
    {
        return;
    }
    let command: Command = match serde_json::from_slice(&line) {
        Ok(c) => c,
        Err(e) => {
            return send(
                &mut w,
                &err("bad_request", format!("malformed request: {e}")),
            )
            .await;
        }
    };
    let response = match command {
        Command::Deploy {
            module_hex,
            manifest,
            adopt,
        } => deploy(&inner, &module_hex, &manifest, adopt.as_deref()).await,
        Command::Call {
            enclave,
            function,
            arg,
            wait_ms,
        } => {
            let wait = wait_ms.map_or(WITHHELD_TIMEOUT, Duration::from_millis);
            call(&inner, &enclave, &function, &arg, wait).await
        }
        Command::Migrate { enclave, to } => migrate(&inner, &enclave, &to, &mut w).await,
        Command::Destroy { enclave } => match parse_enclave(&enclave) {
            Ok(id) => inner.with(|m| m.destroy(id)).map_or_else(
                |e| monitor_err(&inner, e),
                |()| Response::Ok(json!({ "destroyed": enclave })),
            ),
            Err(e) => e,
        },
        Command::Status => Response::Ok(status(&inner)),
        Command::Drain { host } => drain(&inner, &host, &mut w).await,
        Command::AddMember { host, addr } => match HostId::new(host) {
            Ok(host) => add_member(&inner, host, addr).await,
            Err(e) => err("bad_request", e),
        },
        Command::RemoveMember { host } => match HostId::new(host) {
            Ok(host) => remove_member(&inner, host).await,
            Err(e) => err("bad_request", e),
        },
    };
    send(&mut w, &response).await;
}

fn parse_enclave(s: &str) -> Result<EnclaveId, Response> {
    s.parse().map_err(|_| {
        err(
            "bad_request",
            format!("{s:?} is not an enclave id (32 hex digits)"),
        )
    })
}

fn monitor_code(e: &MonitorError) -> &'static str {
    match e {
        MonitorError::UnknownEnclave(_) => "unknown_enclave",
        MonitorError::InstanceLimit { .. } => "instance_limit",
        MonitorError::WrongState { .. } => "wrong_state",
        MonitorError::NotMigratable(_) => "not_migratable",
        MonitorError::AlreadyMigrating(_) => "already_migrating",
        MonitorError::BadDestination(_) => "bad_destination",
        MonitorError::Enclave(_) => "enclave_error",
        _ => "monitor_error",
    }
}

/// The SM's refusal; for an enclave this host does not hold, also where this host's copy
/// of the store last saw it (most often: it was migrated away).
fn monitor_err(inner: &Inner, e: MonitorError) -> Response {
    let MonitorError::UnknownEnclave(id) = &e else {
        return err(monitor_code(&e), e);
    };
    let record = inner.read(|m| {
        m.ledger()
            .get(id)
            .map(|r| (r.owner.to_string(), r.state.name()))
    });
    let hint = match record {
        Some((owner, state)) => format!("; the store records it on {owner}, {state}"),
        None => "; the store has no record of it".to_owned(),
    };
    err(monitor_code(&e), format!("{e}{hint}"))
}

async fn deploy(
    inner: &Arc<Inner>,
    module_hex: &str,
    manifest: &str,
    adopt: Option<&str>,
) -> Response {
    let Ok(module) = hex::decode(module_hex) else {
        return err("bad_request", "the module is not hex");
    };
    let manifest = match Manifest::from_toml(manifest) {
        Ok(m) => m,
        Err(e) => return err("bad_manifest", e),
    };
    let mut events = inner.events.subscribe();
    let created = match adopt.map(parse_enclave) {
        None => inner.with(|m| m.create(&module, manifest)),
        Some(Ok(id)) => inner.with(|m| m.adopt(id, &module, manifest)).map(|()| id),
        Some(Err(e)) => return e,
    };
    let id = match created {
        Ok(id) => id,
        Err(e) => return monitor_err(inner, e),
    };
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event::Registered { enclave }) if enclave == id => return Ok(()),
                Ok(Event::RegistrationRefused { enclave, reason }) if enclave == id => {
                    return Err(reason);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err("node shutting down".into()),
            }
        }
    };
    match tokio::time::timeout(REGISTER_TIMEOUT, wait).await {
        Ok(Ok(())) => Response::Ok(json!({ "enclave": id.to_string() })),
        Ok(Err(reason)) => err("registration_refused", reason),
        Err(_) => err(
            "store_unavailable",
            format!(
                "enclave {id} created but the store did not register it in time; it runs once registered"
            ),
        ),
    }
}

/// How long a withheld result may wait for the store, unless the request says.
const WITHHELD_TIMEOUT: Duration = Duration::from_secs(30);

async fn call(
    inner: &Arc<Inner>,
    enclave: &str,
    function: &str,
    arg: &str,
    wait: Duration,
) -> Response {
    let id = match parse_enclave(enclave) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let mut events = inner.events.subscribe();
    let out = match inner.run_call(id, function, arg.as_bytes()).await {
        Ok(CallOutcome::Done(out)) => out,
        Ok(CallOutcome::Pending(call)) => {
            // The outcome depends on durable state the store has not recorded yet.
            let wait_for = wait;
            let outcome = async {
                loop {
                    match events.recv().await {
                        Ok(Event::CallCompleted {
                            call: c, result, ..
                        }) if c == call => return Some(result),
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                }
            };
            match tokio::time::timeout(wait_for, outcome).await {
                Ok(Some(Ok(out))) => out,
                Ok(Some(Err(CallError::Enclave(e)))) => {
                    return monitor_err(inner, MonitorError::Enclave(e));
                }
                Ok(Some(Err(e))) => return err("store_refused", e),
                Ok(None) => return err("shutting_down", "the node is shutting down"),
                Err(_) => {
                    return err(
                        "store_unavailable",
                        "the result is withheld until the store records the enclave's state",
                    );
                }
            }
        }
        Err(e) => return monitor_err(inner, e),
    };
    match String::from_utf8(out) {
        Ok(text) => Response::Ok(json!({ "result": text })),
        Err(e) => Response::Ok(json!({ "result_hex": hex::encode(e.into_bytes()) })),
    }
}

pub(crate) fn report_json(r: &MigrationReport) -> Value {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    json!({
        "to": r.to.to_string(),
        "epoch": r.epoch,
        "bytes": r.bytes,
        "total_ms": ms(r.total),
        "downtime_ms": ms(r.downtime),
        "steps_ms": {
            "attest": ms(r.attest),
            "prepare_ready": ms(r.prepare_ready),
            "begin": ms(r.begin),
            "transfer": ms(r.transfer),
            "commit": ms(r.commit),
        },
    })
}

fn abort_err(reason: &AbortReason) -> Response {
    err(reason.code(), reason)
}

/// Runs one migration, sending progress lines, and returns the final answer.
async fn migrate(inner: &Arc<Inner>, enclave: &str, to: &str, w: &mut OwnedWriteHalf) -> Response {
    let id = match parse_enclave(enclave) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let Ok(to) = HostId::new(to) else {
        return err("bad_request", format!("{to:?} is not a host id"));
    };
    if to != inner.cfg.id && !inner.knows(&to) {
        return err(
            "unknown_host",
            format!("{to} is not a host of this cluster"),
        );
    }
    match run_migration(inner, id, to, Some(w)).await {
        Ok(report) => {
            let mut v = report_json(&report);
            v["enclave"] = json!(enclave);
            Response::Ok(v)
        }
        Err(r) => r,
    }
}

pub(crate) async fn run_migration(
    inner: &Arc<Inner>,
    id: EnclaveId,
    to: HostId,
    mut progress: Option<&mut OwnedWriteHalf>,
) -> Result<MigrationReport, Response> {
    // A receiver that has just started takes part once the ledger recorded its boot:
    // nothing was paused, so asking again is free (bounded: 40 × 250 ms).
    let mut attempts = 40;
    loop {
        match migrate_once(inner, id, to.clone(), progress.as_deref_mut()).await {
            Attempt::Aborted(AbortReason::Refused(RefuseReason::Starting)) if attempts > 1 => {
                attempts -= 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Attempt::Aborted(reason) => return Err(abort_err(&reason)),
            Attempt::NotStarted(refused) => return Err(refused),
            Attempt::Shutdown => return Err(err("shutdown", "node shutting down")),
            Attempt::Done(report) => return Ok(report),
        }
    }
}

/// How one attempt at a migration ended.
enum Attempt {
    Done(MigrationReport),
    Aborted(AbortReason),
    /// The SM refused to start it (unknown enclave, already migrating, …).
    NotStarted(Response),
    Shutdown,
}

async fn migrate_once(
    inner: &Arc<Inner>,
    id: EnclaveId,
    to: HostId,
    mut progress: Option<&mut OwnedWriteHalf>,
) -> Attempt {
    let mut events = inner.events.subscribe();
    let migration = match inner.with(|m| m.migrate(id, to)) {
        Ok(m) => m,
        Err(e) => return Attempt::NotStarted(monitor_err(inner, e)),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(Event::MigrationFinished { migration: m, outcome, .. }) if m == migration => {
                    return outcome.map_or_else(Attempt::Aborted, Attempt::Done);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Attempt::Shutdown,
            },
            _ = tick.tick() => {
                if let (Some(w), Some((sent, total))) = (progress.as_deref_mut(), inner.with(|m| m.migration_progress(migration))) {
                    send(w, &Response::Progress { sent, total }).await;
                }
            }
        }
    }
}

pub(crate) fn status(inner: &Arc<Inner>) -> Value {
    let store = inner.store_status();
    let hosts: Vec<Value> = inner
        .members()
        .into_iter()
        .map(|m| {
            let boot = inner.read(|sm| {
                sm.ledger()
                    .boot_of(&m.host)
                    .map(godwit_hw::BootEpoch::count_of)
            });
            json!({
                "boot": boot,
                "id": m.host.to_string(),
                "addr": m.addr,
                "voter": m.voter,
                "up": inner.is_up(&store, &m.host),
                "leader": store.leader.as_ref() == Some(&m.host),
            })
        })
        .collect();
    let (enclaves, counts): (Vec<Value>, Vec<Value>) = inner.read(|m| {
        let ledger = m.ledger();
        let enclaves = ledger
            .records()
            .map(|r| {
                json!({
                    "id": r.id.to_string(),
                    "app": r.app_name,
                    "owner": r.owner.to_string(),
                    "epoch": r.epoch,
                    "state": r.state.name(),
                })
            })
            .collect();
        let counts = ledger
            .instance_counts()
            .into_iter()
            .map(|((app, host), n)| json!({ "app": app, "host": host.to_string(), "instances": n }))
            .collect();
        (enclaves, counts)
    });
    let local: Vec<Value> = inner.read(|m| m.list()).into_iter().map(|i| {
        json!({ "id": i.id.to_string(), "app": i.app, "state": i.state.to_string(), "epoch": i.epoch, "memory_bytes": i.memory_bytes, "busy": i.busy })
    }).collect();
    let metrics = inner
        .metrics
        .lock()
        .map(|m| m.to_json())
        .unwrap_or_default();
    let member = json!({
        "leader": store.leader.as_ref().map(ToString::to_string),
        "term": store.term,
        "applied": store.applied,
        "lease": store.lease,
        "rejoining": store.rejoining,
        "cluster": store.cluster,
        "learners": store.learners.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    json!({ "self": inner.cfg.id.to_string(), "boot": inner.read(Monitor::boot_count), "store": member, "hosts": hosts, "enclaves": enclaves, "local": local, "instances": counts, "metrics": metrics })
}

/// How long a membership request waits for the store to apply it before answering.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(15);

/// Waits for the first of `events` that `done` maps to an answer, for up to `wait`.
async fn first_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    wait: Duration,
    mut done: impl FnMut(&Event) -> Option<T>,
) -> Option<T> {
    let found = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = done(&e) {
                        return Some(t);
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(wait, found).await.ok().flatten()
}

async fn add_member(inner: &Arc<Inner>, host: HostId, addr: String) -> Response {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return err(
            "bad_request",
            format!("{addr:?} is not an address like 127.0.0.1:7104"),
        );
    }
    let mut events = inner.events.subscribe();
    if let Err(e) = inner.with(|m| m.add_member(host.clone(), addr.clone())) {
        return err("membership", e);
    }
    let answer = first_event(&mut events, MEMBERSHIP_WAIT, |e| match e {
        Event::Membership(MembershipChange::Learner(h) | MembershipChange::Voter(h))
            if *h == host =>
        {
            Some(Ok(()))
        }
        Event::MembershipRefused { host: h, reason } if *h == host => Some(Err(reason.clone())),
        _ => None,
    })
    .await;
    match answer {
        Some(Ok(())) => Response::Ok(json!({ "added": host.to_string(), "addr": addr })),
        Some(Err(reason)) => err("membership", reason),
        // Not up yet (the usual case right after `cluster add`): the SM keeps trying.
        None => Response::Ok(json!({
            "admitting": host.to_string(),
            "addr": addr,
            "note": format!(
                "{host} is not attested yet: start it; this host's SM keeps trying for {} s, and `godwit status` shows it once it joined",
                godwit_monitor::ADMISSION_WINDOW.as_secs()
            ),
        })),
    }
}

async fn remove_member(inner: &Arc<Inner>, host: HostId) -> Response {
    let mut events = inner.events.subscribe();
    if let Err(e) = inner.with(|m| m.remove_member(&host)) {
        let code = if inner.members().iter().any(|m| m.host == host) {
            "membership"
        } else {
            "unknown_host"
        };
        return err(code, e);
    }
    let left = first_event(&mut events, MEMBERSHIP_WAIT, |e| match e {
        Event::Membership(MembershipChange::Left(h)) if *h == host => Some(()),
        _ => None,
    })
    .await;
    match left {
        Some(()) => Response::Ok(json!({ "removed": host.to_string() })),
        None => err(
            "store_unavailable",
            format!("the store did not apply {host}'s removal in time; it may still"),
        ),
    }
}

/// Has the SM probe the store and waits for the answer.
pub(crate) async fn probe(inner: &Arc<Inner>, wait: Duration) -> Result<(), String> {
    let mut events = inner.events.subscribe();
    let probe = inner.with(|m| m.probe_store()).map_err(|e| e.to_string())?;
    first_event(&mut events, wait, |e| match e {
        Event::StoreProbed { probe: p, outcome } if *p == probe => Some(outcome.clone()),
        _ => None,
    })
    .await
    .unwrap_or_else(|| Err("the store did not apply the probe in time".into()))
}

/// Migrates every enclave of this host away, trying peers in turn for each.
async fn drain(inner: &Arc<Inner>, host: &str, w: &mut OwnedWriteHalf) -> Response {
    if host != inner.cfg.id.as_str() {
        return err(
            "bad_request",
            format!(
                "this daemon runs {}, not {host}: drain is run against the host to empty",
                inner.cfg.id
            ),
        );
    }
    let enclaves: Vec<EnclaveId> = inner
        .with(|m| m.list())
        .into_iter()
        .filter(|i| matches!(i.state, EnclaveState::Running | EnclaveState::Paused))
        .map(|i| i.id)
        .collect();
    let peers: Vec<HostId> = inner
        .members()
        .into_iter()
        .map(|m| m.host)
        .filter(|h| *h != inner.cfg.id)
        .collect();
    let (mut moved, mut failed) = (Vec::new(), Vec::new());
    for (i, id) in enclaves.iter().enumerate() {
        let mut last = None;
        for k in 0..peers.len() {
            let to = peers[(i + k) % peers.len()].clone();
            match run_migration(inner, *id, to.clone(), Some(w)).await {
                Ok(report) => {
                    last = None;
                    moved.push(json!({ "enclave": id.to_string(), "to": to.to_string(), "epoch": report.epoch }));
                    break;
                }
                Err(Response::Err { error, code }) => {
                    last = Some(
                        json!({ "enclave": id.to_string(), "to": to.to_string(), "error": error, "code": code }),
                    )
                }
                Err(_) => {}
            }
        }
        if let Some(f) = last {
            failed.push(f);
        }
    }
    if failed.is_empty() {
        Response::Ok(json!({ "moved": moved, "failed": failed }))
    } else {
        err(
            "drain_incomplete",
            format!(
                "{} of {} enclaves could not be moved: {}",
                failed.len(),
                enclaves.len(),
                Value::Array(failed)
            ),
        )
    }
}
