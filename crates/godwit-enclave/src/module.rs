//! Loading: validate a module against what the SM can run and capture, rewrite it so every
//! mutable global is reachable, compile it.

use std::collections::BTreeSet;
use std::sync::Arc;

use godwit_wire::{Manifest, Measurement};
use wasm_encoder::{ExportKind, ExportSection, RawSection};
use wasmparser::{ExternalKind, Operator, Parser, Payload, ValType};
use wasmtime::{ExternType, FuncType, ValType as WtValType};

use crate::abi;
use crate::{EnclaveError, Runtime};

/// Prefix of the exports the loader adds for mutable globals; modules may not use it.
pub(crate) const GLOBAL_EXPORT_PREFIX: &str = "__godwit_global_";
/// The export the SM calls to obtain a buffer for an ecall's argument: `(len i32) -> i32`.
pub const ALLOC_EXPORT: &str = "godwit_alloc";
/// The linear memory every enclave exports.
pub const MEMORY_EXPORT: &str = "memory";

/// A validated, measured and compiled enclave application, shared by all its instances.
pub struct LoadedModule {
    pub(crate) module: wasmtime::Module,
    pub(crate) manifest: Manifest,
    pub(crate) measurement: Measurement,
    pub(crate) original: Arc<[u8]>,
    pub(crate) ecalls: BTreeSet<String>,
    /// Module-defined mutable globals, by index, with their value types.
    pub(crate) mutable_globals: Vec<(u32, ValType)>,
}

impl LoadedModule {
    /// The enclave measurement (module bytes + canonical manifest).
    pub fn measurement(&self) -> Measurement {
        self.measurement
    }

    /// The manifest the module was loaded with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The module exactly as presented (what the measurement covers, and what a migration
    /// sends to the destination).
    pub fn module_bytes(&self) -> &Arc<[u8]> {
        &self.original
    }

    /// The names of the ecalls the module exports.
    pub fn ecalls(&self) -> impl Iterator<Item = &str> {
        self.ecalls.iter().map(String::as_str)
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.manifest.name)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

/// What the static scan of a module found.
struct Scan {
    mutable_globals: Vec<(u32, ValType)>,
    export_section: Option<std::ops::Range<usize>>,
}

impl Runtime {
    /// Largest module accepted, in bytes.
    pub const MODULE_BYTES_MAX: usize = 16 * 1024 * 1024;

    /// Validates, measures and compiles an enclave application.
    pub fn load(
        &self,
        module: &[u8],
        manifest: Manifest,
    ) -> Result<Arc<LoadedModule>, EnclaveError> {
        if module.len() > Self::MODULE_BYTES_MAX {
            return Err(EnclaveError::ModuleTooLarge {
                len: module.len(),
                max: Self::MODULE_BYTES_MAX,
            });
        }
        manifest.validate()?;
        let measurement = manifest.measure(module);
        let scan = scan(module)?;
        let rewritten = export_mutable_globals(module, &scan)?;
        let compiled = wasmtime::Module::new(&self.engine, &rewritten)
            .map_err(|e| EnclaveError::Invalid(format!("{e:#}")))?;
        check_imports(&compiled)?;
        let ecalls = check_exports(&compiled)?;
        Ok(Arc::new(LoadedModule {
            module: compiled,
            manifest,
            measurement,
            original: module.into(),
            ecalls,
            mutable_globals: scan.mutable_globals,
        }))
    }
}

fn invalid(e: impl std::fmt::Display) -> EnclaveError {
    EnclaveError::Invalid(e.to_string())
}

/// Walks the module once: records mutable globals and the export section, and refuses
/// what the SM could not snapshot faithfully (a start function, imported globals, tables or
/// memories, instructions that change tables or drop segments at run time).
fn scan(module: &[u8]) -> Result<Scan, EnclaveError> {
    let mut out = Scan {
        mutable_globals: Vec::new(),
        export_section: None,
    };
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(invalid)? {
            Payload::StartSection { .. } => {
                return Err(EnclaveError::Unsupported("a start function".into()));
            }
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.into_iter().enumerate() {
                    let global = global.map_err(invalid)?;
                    if global.ty.mutable {
                        let index = u32::try_from(index).map_err(invalid)?;
                        out.mutable_globals.push((index, global.ty.content_type));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader.clone() {
                    if export
                        .map_err(invalid)?
                        .name
                        .starts_with(GLOBAL_EXPORT_PREFIX)
                    {
                        return Err(EnclaveError::Unsupported(format!(
                            "export names starting with {GLOBAL_EXPORT_PREFIX}"
                        )));
                    }
                }
                out.export_section = Some(reader.range());
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(invalid)?;
                while !ops.eof() {
                    refuse_stateful_operator(&ops.read().map_err(invalid)?)?;
                }
            }
            _ => {}
        }
    }
    for &(_, ty) in &out.mutable_globals {
        if !matches!(
            ty,
            ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128
        ) {
            return Err(EnclaveError::Unsupported(format!(
                "a mutable global of type {ty}"
            )));
        }
    }
    Ok(out)
}

/// Table contents and segment-dropped flags are instance state that a snapshot of memory
/// and globals would miss, so instructions that change them are refused at load time.
fn refuse_stateful_operator(op: &Operator<'_>) -> Result<(), EnclaveError> {
    let name = match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        Operator::ElemDrop { .. } => "elem.drop",
        Operator::DataDrop { .. } => "data.drop",
        _ => return Ok(()),
    };
    Err(EnclaveError::Unsupported(format!("the {name} instruction")))
}

/// Re-emits the module with one extra export per mutable global, so that the runtime can
/// read and write every piece of execution state. All other sections are copied verbatim.
fn export_mutable_globals(module: &[u8], scan: &Scan) -> Result<Vec<u8>, EnclaveError> {
    let Some(export_range) = scan.export_section.clone() else {
        return Err(EnclaveError::MissingExport(MEMORY_EXPORT.into()));
    };
    let mut out = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(invalid)?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.map_err(invalid)?;
                exports.export(export.name, export_kind(export.kind)?, export.index);
            }
            for &(index, _) in &scan.mutable_globals {
                exports.export(&global_export_name(index), ExportKind::Global, index);
            }
            out.section(&exports);
            continue;
        }
        if let Some((id, range)) = payload.as_section() {
            // Custom sections (names, debug info) do not affect execution; drop them.
            if id != 0 && range != export_range {
                out.section(&RawSection {
                    id,
                    data: &module[range],
                });
            }
        }
    }
    Ok(out.finish())
}

fn export_kind(kind: ExternalKind) -> Result<ExportKind, EnclaveError> {
    Ok(match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        other => {
            return Err(EnclaveError::Unsupported(format!(
                "an export of kind {other:?}"
            )));
        }
    })
}

pub(crate) fn global_export_name(index: u32) -> String {
    format!("{GLOBAL_EXPORT_PREFIX}{index}")
}

fn check_imports(module: &wasmtime::Module) -> Result<(), EnclaveError> {
    for import in module.imports() {
        let (module_name, name) = (import.module(), import.name());
        let ExternType::Func(ty) = import.ty() else {
            return Err(EnclaveError::UnknownImport(format!("{module_name}.{name}")));
        };
        let Some(expected) = abi::import_signature(module_name, name) else {
            return Err(EnclaveError::UnknownImport(format!("{module_name}.{name}")));
        };
        if !same_signature(&ty, expected.0, expected.1) {
            return Err(EnclaveError::WrongSignature(format!(
                "{module_name}.{name}"
            )));
        }
    }
    Ok(())
}

fn same_signature(ty: &FuncType, params: &[WtValType], results: &[WtValType]) -> bool {
    let eq = |a: WtValType, b: &WtValType| WtValType::eq(&a, b);
    ty.params().len() == params.len()
        && ty.results().len() == results.len()
        && ty.params().zip(params).all(|(a, b)| eq(a, b))
        && ty.results().zip(results).all(|(a, b)| eq(a, b))
}

/// Checks the required exports and returns the ecalls: every exported function of type
/// `(i32 ptr, i32 len) -> i64` other than the ABI's own.
fn check_exports(module: &wasmtime::Module) -> Result<BTreeSet<String>, EnclaveError> {
    use WtValType::{I32, I64};
    let mut ecalls = BTreeSet::new();
    let mut memory = false;
    let mut alloc = false;
    for export in module.exports() {
        match (export.name(), export.ty()) {
            (MEMORY_EXPORT, ExternType::Memory(ty)) => {
                if ty.is_64() || ty.is_shared() {
                    return Err(EnclaveError::Unsupported(
                        "a 64-bit or shared memory".into(),
                    ));
                }
                memory = true;
            }
            (ALLOC_EXPORT, ExternType::Func(ty)) => {
                if !same_signature(&ty, &[I32], &[I32]) {
                    return Err(EnclaveError::WrongSignature(ALLOC_EXPORT.into()));
                }
                alloc = true;
            }
            (name, ExternType::Func(ty)) if same_signature(&ty, &[I32, I32], &[I64]) => {
                ecalls.insert(name.to_owned());
            }
            _ => {}
        }
    }
    if !memory {
        return Err(EnclaveError::MissingExport(MEMORY_EXPORT.into()));
    }
    if !alloc {
        return Err(EnclaveError::MissingExport(ALLOC_EXPORT.into()));
    }
    if ecalls.is_empty() {
        return Err(EnclaveError::MissingExport(
            "an ecall: (i32, i32) -> i64".into(),
        ));
    }
    Ok(ecalls)
}
