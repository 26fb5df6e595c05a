//! The control socket: NDJSON requests over a Unix socket, one short-lived
//! thread per client (bounded in number, line length and idle time).

use super::{Control, err};
use lvc_proto::{
    ErrorCode, MAX_REQUEST_BYTES, RequestEnvelope, Response, ResponseEnvelope, VERSION,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Decodes one request line and answers it.
pub fn answer(control: &Control, line: &[u8]) -> ResponseEnvelope {
    let result = match serde_json::from_slice::<serde_json::Value>(line) {
        Err(e) => Response::Error(err(
            ErrorCode::BadRequest,
            format!("request is not JSON: {e}"),
        )),
        Ok(v) => match v.get("version").and_then(|v| v.as_u64()) {
            None => Response::Error(err(
                ErrorCode::BadRequest,
                "request has no protocol `version`",
            )),
            Some(ver) if ver != u64::from(VERSION) => Response::Error(err(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version {ver} is not supported: this lvc-dataplane speaks version {VERSION}; use the lvc-ctl of the same release"
                ),
            )),
            Some(_) => match serde_json::from_value::<RequestEnvelope>(v) {
                Ok(env) => control.handle(env.request),
                Err(e) => {
                    Response::Error(err(ErrorCode::BadRequest, format!("invalid request: {e}")))
                }
            },
        },
    };
    ResponseEnvelope::new(result)
}

/// How long a client may take over one request (or wait before its next
/// one), however slowly it trickles bytes in: a slot is never held longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most client connections served at once.
const MAX_CLIENTS: usize = 64;

/// The listening control socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the socket (mode 0660, parent directory made if missing). A
    /// stale socket file left by a dead daemon is replaced; a live one is
    /// an error.
    pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<Self> {
        use anyhow::Context;
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{} is in use: is another lvc-dataplane running?",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale {}", path.display()))?;
        }
        // Bound in a private directory (mode 0700) next to it, given its
        // mode and group there, then renamed into place: there is no moment
        // at which the socket exists with the umask's permissions where
        // other users could reach it.
        let dir = path.parent().unwrap_or(Path::new("."));
        let private = dir.join(format!(".lvc-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .with_context(|| format!("cannot create {}", private.display()))?;
        let staged = private.join("sock");
        let placed = (|| -> anyhow::Result<UnixListener> {
            let listener = UnixListener::bind(&staged)
                .with_context(|| format!("cannot bind {}", staged.display()))?;
            // Owner root, group root or `group`, mode 0660: everyone else
            // gets EACCES from connect().
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
            if let Some(gid) = group {
                std::os::unix::fs::chown(&staged, None, Some(gid))
                    .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
            }
            std::fs::rename(&staged, path)
                .with_context(|| format!("cannot move the socket to {}", path.display()))?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let listener = placed?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves clients until `shutdown`.
    pub fn serve(self, control: Arc<Control>, shutdown: Arc<AtomicBool>) {
        self.listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let clients = Arc::new(AtomicUsize::new(0));
        while !shutdown.load(Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if clients.load(Relaxed) >= MAX_CLIENTS {
                        let _ = reply(&stream, &busy());
                        continue;
                    }
                    // The slot is given back when the guard drops: after the
                    // client is served, if its thread panics, or if the
                    // thread cannot be started at all.
                    let slot = ClientSlot::take(&clients);
                    let control = control.clone();
                    let _ = std::thread::Builder::new()
                        .name("lvc-ctl-client".into())
                        .spawn(move || {
                            let _slot = slot;
                            serve_client(stream, &control);
                        });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl std::ops::Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One of a bounded number of client slots (control clients, metrics
/// scrapes), released on drop — also if the thread serving it panics or
/// never starts.
pub(super) struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    pub(super) fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Relaxed);
        Self(count.clone())
    }
}

impl std::ops::Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn busy() -> ResponseEnvelope {
    ResponseEnvelope::new(Response::Error(err(
        ErrorCode::Internal,
        "too many control clients; try again",
    )))
}

fn reply(mut stream: &UnixStream, resp: &ResponseEnvelope) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Answers one client's requests, one line each, until it hangs up, goes
/// quiet for too long, or sends a line over the size limit.
fn serve_client(stream: UnixStream, control: &Control) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(
        Timed {
            stream: read_half,
            until: Instant::now() + CLIENT_TIMEOUT,
        }
        .take(0),
    );
    let mut line = Vec::new();
    loop {
        line.clear();
        reader.get_mut().get_mut().until = Instant::now() + CLIENT_TIMEOUT;
        // Bound each line: one byte over the limit means "too long".
        reader.get_mut().set_limit(MAX_REQUEST_BYTES as u64 + 1);
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if line.len() > MAX_REQUEST_BYTES {
            // Discard the rest of the line (bounded), so the client is
            // reading, not writing, when the answer comes.
            if line.last() != Some(&b'\n') {
                reader.get_mut().set_limit(64 << 20);
                let _ = reader.read_until(b'\n', &mut Vec::new());
            }
            let _ = reply(
                &stream,
                &ResponseEnvelope::new(Response::Error(err(
                    ErrorCode::BadRequest,
                    format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                ))),
            );
            return;
        }
        if line.last() != Some(&b'\n') {
            // EOF in the middle of a request: nothing to answer.
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if reply(&stream, &answer(control, &line)).is_err() {
            return;
        }
    }
}

/// A stream whose reads all end by `until` (each read waits at most what
/// is left), so a client that sends a byte now and then cannot hold its
/// slot past the deadline.
struct Timed {
    stream: UnixStream,
    until: Instant,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}
