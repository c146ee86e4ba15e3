//! Fuzz target bodies: every parser that takes bytes from a peer SM or from the host.
//!
//! Each function takes the fuzzer's input and either returns or panics. A panic is a bug:
//! bad input must give a typed error. Where a property is stronger than "no panic" (a
//! forged handshake message is never accepted, a tampered record or blob is never opened,
//! a decoded message re-encodes to itself), the body asserts it.
//!
//! `fuzz/` holds the cargo-fuzz targets (nightly, libFuzzer), one line each around these
//! bodies. `tests/smoke.rs` runs the same bodies on stable over seeded random and mutated
//! inputs as part of `cargo test`. docs/testing.md tells how to run them long.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use godwit_attest::{
    HandshakeMessage, Initiator, Opened, Policy, Receiver, RecordBuf, RecordType, Responder, Sender,
};
use godwit_enclave::{AbiError, Runtime, Services};
use godwit_hw::{DeviceIdentity, Hardware, Manufacturer, SimHardware};
use godwit_monitor::seal::{self, BlobHeader};
use godwit_proto::{LedgerOp, Message};
use godwit_wire::{EnclaveId, HostId, Manifest, Measurement};

/// Every decoder a peer SM's bytes reach: migration messages, handshake messages, ledger
/// operations and store messages. A message that decodes must encode back to bytes that
/// decode to the same message.
pub fn wire(data: &[u8]) {
    if let Ok(msg) = Message::decode(data) {
        let again = godwit_wire::encode(&msg);
        assert_eq!(
            Message::decode(&again).ok().as_ref(),
            Some(&msg),
            "a decoded message must survive a round trip"
        );
    }
    if let Ok(msg) = HandshakeMessage::decode(data) {
        let again = godwit_wire::encode(&msg);
        assert!(HandshakeMessage::decode(&again).is_ok());
    }
    if let Ok(op) = godwit_wire::decode::<LedgerOp>(data, 1 << 20) {
        let again = godwit_wire::encode(&op);
        assert_eq!(
            godwit_wire::decode::<LedgerOp>(&again, 1 << 20).ok(),
            Some(op)
        );
    }
}

/// What a peer SM's store member and the host's disk hand a store member: a store message
/// (bound to the attested peer and to this member), a snapshot's state, and the record
/// files the member opens at start. Bad bytes are refused, never a panic.
pub fn store(data: &[u8]) {
    let (a, b) = (&hosts().a, &hosts().b);
    let me = godwit_store::node_id(b.host());
    let _ = godwit_store::store_message_decodes(a.host(), me, data);
    let _ = godwit_store::snapshot_decodes(data);
    // The data as record files: length-prefixed (2 bytes) chunks.
    let mut records = Vec::new();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let n = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        records.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    let hw = boot(b, seed_of(data));
    let config = godwit_store::MemberConfig {
        founders: vec![a.host().clone(), b.host().clone()],
        ..Default::default()
    };
    let (member, opened) = godwit_store::Member::open(hw, config, &records);
    assert!(
        records.is_empty() || matches!(opened, godwit_store::Opened::Refused(_)),
        "records no SM sealed are refused"
    );
    member.check_invariants();
}

/// Two provisioned hosts and a policy that trusts both, made once.
struct Hosts {
    a: DeviceIdentity,
    b: DeviceIdentity,
    policy: Arc<Policy>,
}

fn hosts() -> &'static Hosts {
    static HOSTS: OnceLock<Hosts> = OnceLock::new();
    HOSTS.get_or_init(|| {
        let m = Manufacturer::from_seed([7; 32]);
        let host = |name: &str| HostId::new(name).expect("a valid host name");
        Hosts {
            a: m.provision_from_secret(host("a"), [1; 32].into()),
            b: m.provision_from_secret(host("b"), [2; 32].into()),
            policy: Arc::new(Policy {
                roots: vec![m.root()],
                allowed_sm: vec![godwit_monitor::sm_measurement()],
                allowed_hosts: None,
            }),
        }
    })
}

/// A seed that depends on the whole input, so that no input can carry a valid answer to
/// the nonces it causes (the simulated hardware is deterministic from its seed).
fn seed_of(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn boot(identity: &DeviceIdentity, seed: u64) -> Arc<dyn Hardware> {
    let (hw, _clock) = SimHardware::new(identity.clone(), godwit_monitor::sm_measurement(), seed);
    Arc::new(hw)
}

/// The input as each handshake message in turn: a ClientHello to a responder, a
/// ServerHello to an initiator, a ClientFinish to a responder that answered a genuine
/// hello. The last two must never be accepted: they need signatures over fresh nonces.
pub fn handshake(data: &[u8]) {
    let hosts = hosts();
    let seed = seed_of(data);
    let b_name = hosts.b.host().clone();
    let _ = Responder::respond(boot(&hosts.b, seed), Arc::clone(&hosts.policy), data);
    let (wait, _hello) = Initiator::start(
        boot(&hosts.a, seed),
        Arc::clone(&hosts.policy),
        b_name.clone(),
    );
    assert!(
        wait.receive(data).is_err(),
        "an initiator accepted a ServerHello nobody signed"
    );
    let (_wait, hello) =
        Initiator::start(boot(&hosts.a, seed ^ 1), Arc::clone(&hosts.policy), b_name);
    let (finish, _server_hello) =
        Responder::respond(boot(&hosts.b, seed ^ 2), Arc::clone(&hosts.policy), &hello)
            .expect("a genuine ClientHello is answered");
    assert!(
        finish.receive(data).is_err(),
        "a responder accepted a ClientFinish nobody signed"
    );
}

/// What the network does to the record stream, in [`records`].
#[derive(Debug, Arbitrary)]
pub enum RecordOp {
    /// The sender seals a payload of `len % 4096` bytes of `fill`.
    Send {
        /// Payload length (modulo 4096).
        len: u16,
        /// Payload byte.
        fill: u8,
    },
    /// The sender closes its direction.
    Close,
    /// The oldest record in flight reaches the receiver.
    Deliver,
    /// The oldest record in flight is lost.
    Drop,
    /// The oldest record in flight is delivered twice.
    Duplicate,
    /// The two oldest records in flight change places.
    Swap,
    /// A bit of the oldest record in flight flips.
    Flip {
        /// Byte index (modulo the record's length).
        byte: u16,
        /// Bit index (modulo 8).
        bit: u8,
    },
    /// The oldest record in flight loses its tail.
    Truncate {
        /// Bytes kept (modulo the record's length).
        keep: u16,
    },
}

struct InFlight {
    bytes: Vec<u8>,
    /// The bytes as sealed, their sequence number, and the payload (`None`: a close).
    sealed: Arc<(Vec<u8>, u64, Option<Vec<u8>>)>,
}

impl InFlight {
    fn new(bytes: Vec<u8>, seq: u64, payload: Option<Vec<u8>>) -> Self {
        Self {
            sealed: Arc::new((bytes.clone(), seq, payload)),
            bytes,
        }
    }

    /// Untouched (flips that cancel out leave a record untouched).
    fn genuine(&self) -> bool {
        self.bytes == self.sealed.0
    }
}

/// A channel pair, and a network that loses, duplicates, reorders, flips and truncates
/// records. The receiver must open exactly the untouched records in order, with their
/// payloads, and nothing after its first refusal.
pub fn records(data: &[u8]) {
    let Ok(ops) = Vec::<RecordOp>::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let hosts = hosts();
    let seed = seed_of(data);
    let (wait, hello) = Initiator::start(
        boot(&hosts.a, seed),
        Arc::clone(&hosts.policy),
        hosts.b.host().clone(),
    );
    let (finish, server_hello) =
        Responder::respond(boot(&hosts.b, seed ^ 1), Arc::clone(&hosts.policy), &hello)
            .expect("genuine hello");
    let (initiator, client_finish) = wait.receive(&server_hello).expect("genuine server hello");
    let responder = finish.receive(&client_finish).expect("genuine finish");
    let (_, mut tx, _): (_, Sender, _) = initiator.into_channel().split();
    let (_, _, mut rx): (_, _, Receiver) = responder.into_channel().split();

    let mut flight: std::collections::VecDeque<InFlight> = Default::default();
    let mut sent = 0u64;
    let mut expected_seq = 0u64;
    let mut failed = false;
    let mut closed = false;
    for op in ops.into_iter().take(256) {
        match op {
            RecordOp::Send { len, fill } if !closed => {
                let payload = vec![fill; usize::from(len) % 4096];
                let mut rec = RecordBuf::new();
                rec.payload_mut(payload.len()).copy_from_slice(&payload);
                if tx.seal(RecordType::Data, &mut rec).is_ok() {
                    flight.push_back(InFlight::new(rec.into_vec(), sent, Some(payload)));
                    sent += 1;
                }
            }
            RecordOp::Close if !closed => {
                if let Ok(bytes) = tx.close() {
                    flight.push_back(InFlight::new(bytes, sent, None));
                    sent += 1;
                    closed = true;
                }
            }
            RecordOp::Send { .. } | RecordOp::Close => {}
            RecordOp::Deliver | RecordOp::Duplicate => {
                let Some(mut r) = flight.pop_front() else {
                    continue;
                };
                if matches!(op, RecordOp::Duplicate) {
                    flight.push_front(InFlight {
                        bytes: r.bytes.clone(),
                        sealed: Arc::clone(&r.sealed),
                    });
                }
                let acceptable = !failed && r.genuine() && r.sealed.1 == expected_seq;
                let sealed = Arc::clone(&r.sealed);
                match (rx.open(&mut r.bytes), acceptable) {
                    (Ok(opened), true) => {
                        match (opened, &sealed.2) {
                            (Opened::Data(got), Some(want)) => assert_eq!(got, &want[..]),
                            (Opened::Close, None) => {}
                            (got, want) => panic!("opened {got:?}, sealed {want:?}"),
                        }
                        expected_seq += 1;
                    }
                    (Ok(opened), false) => {
                        panic!("the receiver opened a record it must refuse: {opened:?}")
                    }
                    (Err(_), true) => panic!("the receiver refused a genuine, in-order record"),
                    (Err(_), false) => failed = true,
                }
            }
            RecordOp::Drop => {
                flight.pop_front();
            }
            RecordOp::Swap => {
                if flight.len() >= 2 {
                    flight.swap(0, 1);
                }
            }
            RecordOp::Flip { byte, bit } => {
                if let Some(r) = flight.front_mut().filter(|r| !r.bytes.is_empty()) {
                    let i = usize::from(byte) % r.bytes.len();
                    r.bytes[i] ^= 1 << (bit % 8);
                }
            }
            RecordOp::Truncate { keep } => {
                if let Some(r) = flight.front_mut().filter(|r| !r.bytes.is_empty()) {
                    let keep = usize::from(keep) % r.bytes.len();
                    r.bytes.truncate(keep);
                }
            }
        }
    }
    if failed {
        let mut probe = vec![0u8; 64];
        assert!(
            rx.open(&mut probe).is_err(),
            "a failed channel stays failed"
        );
    }
}

/// A manifest as the operator or a peer's PREPARE supplies it (TOML). One that parses and
/// validates must survive a round trip with the same measurement.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::from_toml(text) else {
        return;
    };
    if m.validate().is_err() {
        return;
    }
    let again = Manifest::from_toml(&m.to_toml()).expect("a valid manifest re-parses");
    assert_eq!(again.measure(b"module"), m.measure(b"module"));
}

/// A node configuration file. It must parse to a configuration or a typed error.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = godwit_node::NodeConfig::parse(text, Path::new("/fuzz/host1.toml")) {
        let again = cfg.to_toml();
        assert!(
            godwit_node::NodeConfig::parse(&again, Path::new("/fuzz/host1.toml")).is_ok(),
            "a written configuration reads back"
        );
    }
}

fn blob_binding() -> (EnclaveId, Measurement, &'static str) {
    (EnclaveId([3; 16]), Measurement([4; 32]), "slot")
}

/// The blob `sealed_blob` expects back.
const EXPECTED: seal::Expected = seal::Expected {
    version: 5,
    incarnation: 2,
};

/// A sealed blob the host hands back. The first byte picks the case: arbitrary bytes
/// (never opened: the host cannot forge a blob), or a genuine blob altered by the rest of
/// the input (opened only if unaltered, and then with its plaintext).
pub fn sealed_blob(data: &[u8]) {
    let hosts = hosts();
    let hw = boot(&hosts.a, 0);
    let (enclave, app, slot) = blob_binding();
    let key = hw.sealing_key(&app);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        assert!(
            seal::open(&key, enclave, app, slot, EXPECTED, rest).is_err(),
            "arbitrary bytes opened as a sealed blob"
        );
        return;
    }
    let plaintext = b"the enclave's secret".to_vec();
    let header = BlobHeader {
        format: seal::FORMAT,
        enclave,
        app,
        slot: slot.to_owned(),
        version: EXPECTED.version,
        incarnation: EXPECTED.incarnation,
    };
    let genuine = seal::seal(&key, &header, [9; 12], &plaintext);
    let mut blob = genuine.clone();
    for pair in rest.chunks(3) {
        match pair {
            [0, n, _] => blob.truncate(usize::from(*n) % (blob.len() + 1)),
            [1, b, _] => blob.push(*b),
            [_, i, x] if !blob.is_empty() => {
                let i = usize::from(*i) % blob.len();
                blob[i] ^= *x;
            }
            _ => {}
        }
    }
    match seal::open(&key, enclave, app, slot, EXPECTED, &blob) {
        Ok(data) => {
            assert_eq!(blob, genuine, "an altered blob opened");
            assert_eq!(data, plaintext);
        }
        Err(_) => assert_ne!(blob, genuine, "a genuine blob was refused"),
    }
}

/// Services that refuse everything: the loader and instantiation need no host.
struct NoServices;

impl Services for NoServices {
    fn seal(&mut self, _: &[u8], _: &[u8]) -> Result<(), AbiError> {
        Err(AbiError::HostUnavailable)
    }
    fn unseal(&mut self, _: &[u8]) -> Result<Vec<u8>, AbiError> {
        Err(AbiError::HostUnavailable)
    }
    fn counter_create(&mut self, _: &[u8]) -> Result<(), AbiError> {
        Err(AbiError::HostUnavailable)
    }
    fn counter_increment(&mut self, _: &[u8]) -> Result<u64, AbiError> {
        Err(AbiError::HostUnavailable)
    }
    fn counter_read(&mut self, _: &[u8]) -> Result<u64, AbiError> {
        Err(AbiError::HostUnavailable)
    }
    fn time_ms(&mut self) -> u64 {
        0
    }
    fn random(&mut self, out: &mut [u8]) {
        out.fill(0);
    }
    fn log(&mut self, _: &[u8]) {}
}

/// An enclave module as a deploy or a peer's MODULE messages supply it: the SM validates
/// it, rewrites it to export its mutable globals and compiles it. One that loads must
/// instantiate, and its snapshot must restore.
pub fn module(data: &[u8]) {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| Runtime::new().expect("the wasm runtime starts"));
    let manifest = Manifest::from_toml(
        "name = \"fuzz\"\nversion = \"1\"\nmax_instances_per_host = 1\nmemory_max_mib = 4\nmigratable = true\n",
    )
    .expect("a valid manifest");
    let Ok(loaded) = runtime.load(data, manifest) else {
        return;
    };
    let Ok(mut enclave) = runtime.instantiate(&loaded, NoServices) else {
        return;
    };
    let snapshot = enclave.snapshot();
    let restored = runtime.restore(&loaded, NoServices, &snapshot);
    assert!(restored.is_ok(), "a snapshot of a fresh instance restores");
}

/// Well-formed inputs for each target, to start the fuzzers from (and for the smoke runs
/// to mutate): genuine encodings, the example manifests and modules, a real configuration.
pub mod corpus {
    use super::*;
    use godwit_enclave::examples::ALL;
    use godwit_proto::{FinalState, MigrationId, Prepare};

    /// The targets, by name.
    pub const TARGETS: [&str; 8] = [
        "wire",
        "store",
        "handshake",
        "records",
        "manifest",
        "config",
        "sealed_blob",
        "module",
    ];

    /// Runs the target called `name` on `data`.
    pub fn run(name: &str, data: &[u8]) {
        match name {
            "wire" => wire(data),
            "store" => store(data),
            "handshake" => handshake(data),
            "records" => records(data),
            "manifest" => manifest(data),
            "config" => config(data),
            "sealed_blob" => sealed_blob(data),
            "module" => module(data),
            other => panic!("no fuzz target {other}"),
        }
    }

    /// Seed inputs for the target called `name`.
    pub fn seeds(name: &str) -> Vec<Vec<u8>> {
        match name {
            "wire" => wire_seeds(),
            "store" => vec![vec![0; 64], vec![0, 40, 1, 2, 3], (0..=255).collect()],
            "handshake" => handshake_seeds(),
            "records" => vec![vec![0; 64], (0..=255).collect()],
            "manifest" => ALL.iter().map(|e| e.manifest.as_bytes().to_vec()).collect(),
            "config" => vec![CONFIG.as_bytes().to_vec()],
            "sealed_blob" => vec![vec![1, 0, 3, 7], vec![0; 80]],
            "module" => ALL.iter().map(|e| e.module()).collect(),
            _ => Vec::new(),
        }
    }

    const CONFIG: &str = r#"id = "host1"
listen = "127.0.0.1:7101"
data_dir = "host1"
memory_budget_mib = 8192

[control]
socket = "host1/control.sock"
token_file = "host1/control.token"

[policy]
manufacturer_roots = ["86c36dc33d24759b9d32d9e7aaebac1223705e9725c2530459f368dc805eb75b"]
allowed_sm = ["9b09cf3e48b8ef98acbf7867d59824cd72287eb7928201f93a4987eb6adf3b4c"]

[timeouts]
handshake_ms = 5000
network_delay_ms = 20
prepare_fixed_ms = 250
throughput_mib_s = 100
margin_ms = 2000
store_ms = 3000

[store]
founders = ["host1", "host2", "host3"]

[[peers]]
id = "host2"
addr = "127.0.0.1:7102"

[[peers]]
id = "host3"
addr = "127.0.0.1:7103"
"#;

    fn wire_seeds() -> Vec<Vec<u8>> {
        let id = MigrationId([5; 16]);
        let counter = godwit_enclave::examples::COUNTER;
        let manifest = counter.manifest();
        let module = counter.module();
        let host = |n: &str| HostId::new(n).expect("valid");
        let messages = [
            Message::Prepare(Box::new(Prepare {
                migration: id,
                enclave: EnclaveId([1; 16]),
                app: manifest.measure(&module),
                manifest,
                module_bytes: module.len() as u64,
                memory_bytes: 65536,
                sealed_slots: 1,
                sealed_bytes: 8,
                counters: 1,
                epoch: 2,
                incarnation: 1,
                cluster: [7; 32],
            })),
            Message::Ready {
                migration: id,
                prepare_us: 120,
                module_cached: true,
            },
            Message::Module {
                migration: id,
                offset: 0,
                bytes: &module[..module.len().min(64)],
            },
            Message::Memory {
                migration: id,
                offset: 4096,
                bytes: &[7; 64],
            },
            Message::Sealed {
                migration: id,
                slot: "count".into(),
                version: 3,
                incarnation: 1,
                data: b"12345678",
            },
            Message::Final {
                migration: id,
                state: Box::new(FinalState {
                    globals: Vec::new(),
                    counters: vec![("n".into(), 4)],
                    sealed_slots: 1,
                    digest: [8; 32],
                }),
            },
            Message::Committed {
                migration: id,
                epoch: 3,
            },
        ];
        let mut out: Vec<Vec<u8>> = messages.iter().map(godwit_wire::encode).collect();
        out.push(godwit_wire::encode(&LedgerOp::Begin {
            id: EnclaveId([1; 16]),
            epoch: 2,
            from: host("a"),
            to: host("b"),
            migration: id,
        }));
        out
    }

    fn handshake_seeds() -> Vec<Vec<u8>> {
        let hosts = hosts();
        let (wait, hello) = Initiator::start(
            boot(&hosts.a, 1),
            Arc::clone(&hosts.policy),
            hosts.b.host().clone(),
        );
        let Ok((finish, server_hello)) =
            Responder::respond(boot(&hosts.b, 2), Arc::clone(&hosts.policy), &hello)
        else {
            return vec![hello];
        };
        let client_finish = wait
            .receive(&server_hello)
            .map(|(_, f)| f)
            .unwrap_or_default();
        drop(finish);
        vec![hello, server_hello, client_finish]
    }
}
