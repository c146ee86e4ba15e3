//! The example enclaves shipped in `examples/`, embedded so that the demo and the tests
//! run with no files around.

/// An example application: its WebAssembly text and its manifest.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// The application's name (also its file stem under `examples/`).
    pub name: &'static str,
    /// The module, as WebAssembly text.
    pub wat: &'static str,
    /// The manifest, as TOML.
    pub manifest: &'static str,
}

/// `counter`: an in-memory count that can be sealed and restored.
pub const COUNTER: Example = Example {
    name: "counter",
    wat: include_str!("../../../examples/counter.wat"),
    manifest: include_str!("../../../examples/counter.toml"),
};

/// `vault`: a sealed secret that only ever leaves as HMACs.
pub const VAULT: Example = Example {
    name: "vault",
    wat: include_str!("../../../examples/vault.wat"),
    manifest: include_str!("../../../examples/vault.toml"),
};

/// `ballast`: bulk memory for benchmarks and tests.
pub const BALLAST: Example = Example {
    name: "ballast",
    wat: include_str!("../../../examples/ballast.wat"),
    manifest: include_str!("../../../examples/ballast.toml"),
};

/// `pin`: a sealed PIN with a monotonic count of attempts.
pub const PIN: Example = Example {
    name: "pin",
    wat: include_str!("../../../examples/pin.wat"),
    manifest: include_str!("../../../examples/pin.toml"),
};

/// Every example.
pub const ALL: [Example; 4] = [COUNTER, VAULT, BALLAST, PIN];

impl Example {
    /// The module as binary WebAssembly.
    pub fn module(&self) -> Vec<u8> {
        // Invariant: the examples are part of this crate and covered by its tests.
        crate::module_from_source(self.wat.as_bytes()).expect("example modules are valid WAT")
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> godwit_wire::Manifest {
        // Invariant: as above, for the manifests.
        godwit_wire::Manifest::from_toml(self.manifest).expect("example manifests are valid")
    }
}
