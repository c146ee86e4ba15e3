//! The control API: how the hypervisor or operator talks to a host's daemon, on a Unix
//! socket (mode 0600). A connection carries one request: first a line with the token from
//! the file the configuration names (read with a small bound and checked before anything
//! else is read), then the command as one JSON line; one or more JSON lines come back
//! (progress, then a final answer).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest request line accepted (a module travels hex-encoded inside it), read only
/// once the token checked out.
pub const REQUEST_BYTES_MAX: usize = 48 * 1024 * 1024;
/// Largest token line accepted: the first thing read from a connection.
pub const TOKEN_LINE_BYTES_MAX: usize = 256;

/// What the client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Create an enclave from a module (hex) and a manifest (TOML text); with `adopt`, a
    /// fresh instance of that lost enclave instead (on the host holding its sealed data).
    Deploy {
        /// The module, hex.
        module_hex: String,
        /// The manifest.
        manifest: String,
        /// A lost enclave to adopt.
        #[serde(default)]
        adopt: Option<String>,
    },
    /// Run an ecall.
    Call {
        /// The enclave id.
        enclave: String,
        /// The ecall.
        function: String,
        /// The argument, as text.
        arg: String,
        /// How long to wait for a withheld result (one that waits for the store), in
        /// milliseconds; 30 000 if absent.
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    /// Migrate an enclave to another host.
    Migrate {
        /// The enclave id.
        enclave: String,
        /// The destination host.
        to: String,
    },
    /// Destroy an enclave.
    Destroy {
        /// The enclave id.
        enclave: String,
    },
    /// Cluster and enclave status.
    Status,
    /// Migrate every enclave off a host (run on that host).
    Drain {
        /// The host to empty (must be the host asked).
        host: String,
    },
    /// Add a host to the store's membership: this host's SM attests it (trying for a
    /// while if it is not up yet), then proposes it as a learner; it becomes a voter once
    /// it caught up.
    AddMember {
        /// Its host id.
        host: String,
        /// Its listen address.
        addr: String,
    },
    /// Remove a host from the store's membership; what it ran is recorded lost.
    RemoveMember {
        /// Its host id.
        host: String,
    },
}

/// A response line: progress, or the final answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Migration progress.
    Progress {
        /// Bytes sent.
        sent: u64,
        /// Bytes to send.
        total: u64,
    },
    /// Success, with a command-specific result.
    Ok(serde_json::Value),
    /// Failure, with a one-line reason and a stable code.
    Err {
        /// What went wrong.
        error: String,
        /// A stable code (e.g. an abort reason code).
        code: String,
    },
}

/// Why a control request failed on the client's side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon is not reachable.
    #[error("cannot reach the daemon at {path}: {source} (is `godwit node` running?)")]
    Connect {
        /// The socket.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token file could not be read.
    #[error("cannot read the control token {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke or the daemon answered nonsense.
    #[error("control connection: {0}")]
    Protocol(String),
}

/// Sends one command; calls `on_progress` for each progress line; returns the final answer.
pub async fn request(
    socket: &Path,
    token_file: &Path,
    command: Command,
    mut on_progress: impl FnMut(u64, u64),
) -> Result<Response, ClientError> {
    let token = tokio::fs::read_to_string(token_file)
        .await
        .map_err(|source| ClientError::Token {
            path: token_file.display().to_string(),
            source,
        })?;
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    // The socket must be served by this user: the token goes to nobody else.
    let peer = stream
        .peer_cred()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Ok(me) = crate::node::own_uid()
        && peer.uid() != me
    {
        return Err(ClientError::Protocol(format!(
            "{} is served by user {}, not by this user: not sending the token",
            socket.display(),
            peer.uid()
        )));
    }
    let (read, mut write) = stream.into_split();
    let mut line = token.trim().as_bytes().to_vec();
    line.push(b'\n');
    line.extend(serde_json::to_vec(&command).map_err(|e| ClientError::Protocol(e.to_string()))?);
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut lines = BufReader::new(read).lines();
    loop {
        let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        else {
            return Err(ClientError::Protocol(
                "the daemon closed the connection".into(),
            ));
        };
        match serde_json::from_str::<Response>(&line)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            Response::Progress { sent, total } => on_progress(sent, total),
            done => return Ok(done),
        }
    }
}
