//! `godwit bench --vs-qemu`: QEMU's own live migration of the same amount of
//! incompressible memory over loopback, with TLS and without, in the same run.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::bench_suite::now;

/// What `godwit bench --vs-qemu` reports: throughputs, or why QEMU could not be run.
pub fn run(sizes_mib: &[u32]) -> Value {
    let size = sizes_mib.iter().copied().max().unwrap_or(1024).max(16);
    match measure(size) {
        Ok(v) => v,
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn measure(size_mib: u32) -> Result<Value> {
    let qemu = which("qemu-system-x86_64").ok_or_else(|| {
        anyhow!("qemu-system-x86_64 not found: install qemu-system-x86 (on these machines from bookworm-backports, like qemu-utils; see docs/benchmarks.md)")
    })?;
    let openssl = which("openssl")
        .ok_or_else(|| anyhow!("openssl not found: it makes the throwaway TLS credentials"))?;
    let mut r = [0u8; 8];
    #[allow(clippy::disallowed_methods)] // host randomness for a directory name
    getrandom::fill(&mut r).map_err(|e| anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("godwit-qemu-{}", hex::encode(r)));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        fill_incompressible(&dir.join("src.ram"), size_mib)?;
        make_credentials(&openssl, &dir)?;
        // Twice each, alternating, the better run kept: the first touch of fresh memory
        // varies run to run on a VM, and QEMU gets the benefit of the doubt.
        let mut plain = (0.0, 0);
        let mut tls = (0.0, 0);
        for _ in 0..2 {
            for (with_tls, best) in [(false, &mut plain), (true, &mut tls)] {
                let run = migrate_once(&qemu, &dir, size_mib, with_tls)?;
                if run.0 > best.0 {
                    *best = run;
                }
            }
        }
        Ok(json!({
            "size_mib": size_mib,
            "plain_mib_s": plain.0,
            "plain_transferred_bytes": plain.1,
            "tls_mib_s": tls.0,
            "tls_transferred_bytes": tls.1,
            "tls": "TLS 1.3, AES-256-GCM (gnutls priority string), x509 credentials made for this run",
        }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Pseudo-random bytes (xorshift): no zero pages, nothing a migration could skip.
fn fill_incompressible(path: &Path, size_mib: u32) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..size_mib {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn sh(program: &Path, args: &[&str], cwd: &Path) -> Result<()> {
    let out = Command::new(program).args(args).current_dir(cwd).output()?;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, in `dir/server` (the
/// destination) and the CA alone in `dir/client` (the source).
fn make_credentials(openssl: &Path, dir: &Path) -> Result<()> {
    let (srv, cli) = (dir.join("server"), dir.join("client"));
    std::fs::create_dir_all(&srv)?;
    std::fs::create_dir_all(&cli)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca-cert.pem",
        "-subj",
        "/CN=godwit-bench-ca",
        "-days",
        "1",
    ]);
    sh(openssl, &ca, &srv)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    sh(openssl, &csr, &srv)?;
    std::fs::write(srv.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    sh(
        openssl,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "server-cert.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
        &srv,
    )?;
    std::fs::copy(srv.join("ca-cert.pem"), cli.join("ca-cert.pem"))?;
    Ok(())
}

struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TLS_PRIORITY: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM";

fn start_vm(
    qemu: &Path,
    dir: &Path,
    name: &str,
    size_mib: u32,
    tls: Option<&str>,
    incoming: bool,
) -> Result<Vm> {
    // The source's RAM is the pre-filled file; the destination receives into anonymous
    // memory, as godwit's receiver does.
    let backend = if incoming {
        format!("memory-backend-ram,id=mem0,size={size_mib}M")
    } else {
        let ram = dir.join(format!("{name}.ram"));
        if !ram.exists() {
            bail!("{} was not prepared", ram.display());
        }
        format!(
            "memory-backend-file,id=mem0,size={size_mib}M,mem-path={},share=on",
            ram.display()
        )
    };
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-display",
        "none",
        "-machine",
        "pc,memory-backend=mem0",
        "-m",
    ])
    .arg(format!("{size_mib}M"))
    .arg("-object")
    .arg(backend)
    .arg("-qmp")
    .arg(format!(
        "unix:{},server=on,wait=off",
        dir.join(format!("{name}.qmp")).display()
    ))
    .arg("-S");
    if let Some(endpoint) = tls {
        let creds = dir.join(endpoint);
        cmd.arg("-object").arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint={endpoint},verify-peer=off,priority={TLS_PRIORITY}",
            creds.display()
        ));
    }
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    Ok(Vm(cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?))
}

struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self> {
        let start = now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e).context("QMP socket"),
            }
        };
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        };
        q.read()?; // greeting
        q.cmd(json!({ "execute": "qmp_capabilities" }))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    fn cmd(&mut self, c: Value) -> Result<Value> {
        writeln!(self.stream, "{c}")?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {}: {e}", c["execute"]);
            }
            return Ok(v["return"].clone());
        }
    }
}

/// One migration; returns (MiB/s, bytes QEMU says it transferred).
fn migrate_once(qemu: &Path, dir: &Path, size_mib: u32, tls: bool) -> Result<(f64, u64)> {
    let port = godwit_node::cluster::free_base_port(1).ok_or_else(|| anyhow!("no free port"))? + 1;
    let _src = start_vm(qemu, dir, "src", size_mib, tls.then_some("client"), false)?;
    let _dst = start_vm(qemu, dir, "dst", size_mib, tls.then_some("server"), true)?;
    let mut src = Qmp::connect(&dir.join("src.qmp"))?;
    let mut dst = Qmp::connect(&dir.join("dst.qmp"))?;
    let uri = format!("tcp:127.0.0.1:{port}");
    if tls {
        dst.cmd(
            json!({ "execute": "migrate-set-parameters", "arguments": { "tls-creds": "tls0" } }),
        )?;
        src.cmd(json!({ "execute": "migrate-set-parameters", "arguments": { "tls-creds": "tls0", "tls-hostname": "127.0.0.1" } }))?;
    }
    dst.cmd(json!({ "execute": "migrate-incoming", "arguments": { "uri": uri } }))?;
    src.cmd(json!({ "execute": "migrate-set-parameters", "arguments": { "max-bandwidth": 1u64 << 40 } }))?;
    src.cmd(json!({ "execute": "migrate", "arguments": { "uri": uri } }))?;
    let start = now();
    loop {
        let s = src.cmd(json!({ "execute": "query-migrate" }))?;
        match s["status"].as_str() {
            Some("completed") => {
                let ms = s["total-time"].as_f64().unwrap_or(f64::NAN);
                let transferred = s["ram"]["transferred"].as_u64().unwrap_or(0);
                let size = u64::from(size_mib) << 20;
                if transferred < size * 9 / 10 {
                    bail!(
                        "QEMU transferred only {transferred} of {size} bytes: zero pages skipped?"
                    );
                }
                return Ok((f64::from(size_mib) / (ms / 1000.0), transferred));
            }
            Some("failed") | Some("cancelled") => bail!("QEMU migration {}: {s}", s["status"]),
            _ if start.elapsed() > Duration::from_secs(300) => {
                bail!("QEMU migration did not finish in 300 s")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
