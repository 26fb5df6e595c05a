//! The probes: one attempt each, from the director's own stack. The caller
//! bounds every probe by the check's timeout (dropping the future closes
//! its socket; an exec check's process group is killed).

use super::Target;
use lvc_proto::health::CheckKind;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most of an HTTP response read (status line, headers and the start of
/// the body, where `--check-expect` looks).
const HTTP_READ_MAX: u64 = 64 * 1024;

/// One probe of `t`: `Ok` if the server is healthy, else why not.
pub async fn probe(t: &Target) -> Result<(), String> {
    match &t.check.kind {
        CheckKind::None => Ok(()),
        CheckKind::Tcp => tokio::net::TcpStream::connect(t.probe)
            .await
            .map(drop)
            .map_err(|e| describe("connect", &e)),
        CheckKind::Http { path } => http(t, path).await,
        CheckKind::Udp { payload } => udp(t.probe, payload).await,
        CheckKind::Exec { cmd } => exec(t, cmd).await,
    }
}

async fn http(t: &Target, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(t.probe)
        .await
        .map_err(|e| describe("connect", &e))?;
    let host = match &t.check.host {
        Some(h) => h.clone(),
        None => match t.probe {
            SocketAddr::V4(a) if a.port() == 80 => a.ip().to_string(),
            SocketAddr::V6(a) if a.port() == 80 => format!("[{}]", a.ip()),
            a => a.to_string(),
        },
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lvc-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| describe("send", &e))?;
    let mut body = Vec::new();
    (&mut s)
        .take(HTTP_READ_MAX)
        .read_to_end(&mut body)
        .await
        .map_err(|e| describe("read", &e))?;
    judge_http(&body, t.check.status, t.check.expect.as_deref())
}

/// Whether an HTTP response passes: its status in `ok`, and `expect` in
/// its body if given.
fn judge_http(
    resp: &[u8],
    ok: lvc_proto::health::StatusRange,
    expect: Option<&str>,
) -> Result<(), String> {
    let line_end = resp
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| "no HTTP status line".to_owned())?;
    let line = String::from_utf8_lossy(&resp[..line_end]);
    let mut words = line.split_whitespace();
    let status: u16 = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse()
            .map_err(|_| format!("bad HTTP status line `{}`", line.trim()))?,
        _ => return Err(format!("bad HTTP status line `{}`", line.trim())),
    };
    if !ok.contains(status) {
        return Err(format!("HTTP status {status}, expected {ok}"));
    }
    if let Some(want) = expect {
        let body_at = find(resp, b"\r\n\r\n")
            .map(|i| i + 4)
            .or_else(|| find(resp, b"\n\n").map(|i| i + 2))
            .unwrap_or(resp.len());
        if find(&resp[body_at..], want.as_bytes()).is_none() {
            return Err(format!("HTTP status {status} but the body lacks `{want}`"));
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn udp(to: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let any: IpAddr = if to.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = tokio::net::UdpSocket::bind((any, 0))
        .await
        .map_err(|e| describe("bind", &e))?;
    // Connected: an ICMP port unreachable comes back as ECONNREFUSED.
    s.connect(to).await.map_err(|e| describe("connect", &e))?;
    s.send(payload).await.map_err(|e| describe("send", &e))?;
    let mut buf = [0u8; 2048];
    s.recv(&mut buf)
        .await
        .map(drop)
        .map_err(|e| describe("reply", &e))
}

async fn exec(t: &Target, cmd: &str) -> Result<(), String> {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .env("LVC_SERVICE", t.service.to_string())
        .env("LVC_SERVER", t.server.to_string())
        .env("LVC_SERVER_ADDR", t.server.ip().to_string())
        .env("LVC_SERVER_PORT", t.probe.port().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // (The caller's timeout is the real bound; this one only guarantees
    // that the process group dies even if the caller's fires first.)
    match run_bounded(c, t.check.timeout.duration()).await {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(match s.code() {
            Some(code) => format!("command exited with {code}"),
            None => format!("command ended by {s}"),
        }),
        Err(e) => Err(e),
    }
}

/// Runs `c` in a process group of its own and waits at most `limit`; the
/// whole group is killed if it runs longer or if this future is dropped.
pub async fn run_bounded(
    mut c: tokio::process::Command,
    limit: Duration,
) -> Result<ExitStatus, String> {
    c.process_group(0).kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| describe("start", &e))?;
    let group = child
        .id()
        .map(|id| GroupKill(nix::unistd::Pid::from_raw(id as i32)));
    let r = tokio::time::timeout(limit, child.wait()).await;
    match r {
        Ok(Ok(status)) => {
            // Finished: its group (any leftover children) is left alone.
            std::mem::forget(group);
            Ok(status)
        }
        Ok(Err(e)) => Err(describe("wait", &e)),
        Err(_) => Err(format!(
            "command still running after {} s",
            limit.as_secs_f64()
        )),
    }
}

/// Kills a process group when dropped (a timed-out or abandoned command).
struct GroupKill(nix::unistd::Pid);

impl Drop for GroupKill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `connect: connection refused` (without the `(os error 111)`).
fn describe(what: &str, e: &io::Error) -> String {
    let msg = e.to_string();
    let msg = msg
        .split(" (os error")
        .next()
        .unwrap_or(&msg)
        .to_lowercase();
    format!("{what}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::health::StatusRange;

    #[test]
    fn http_responses_are_judged_by_status_and_body() {
        let ok = StatusRange::default();
        assert!(judge_http(b"HTTP/1.1 200 OK\r\n\r\nhello", ok, None).is_ok());
        assert!(judge_http(b"HTTP/1.0 302 Found\r\n\r\n", ok, None).is_ok());
        let e = judge_http(b"HTTP/1.1 503 Busy\r\n\r\n", ok, None).unwrap_err();
        assert_eq!(e, "HTTP status 503, expected 200-399");
        assert!(
            judge_http(
                b"HTTP/1.1 200 OK\r\nX: alive\r\n\r\nhello",
                ok,
                Some("alive")
            )
            .is_err()
        );
        assert!(judge_http(b"HTTP/1.1 200 OK\r\n\r\nI am alive", ok, Some("alive")).is_ok());
        assert!(judge_http(b"SSH-2.0-OpenSSH\r\n", ok, None).is_err());
        assert!(judge_http(b"", ok, None).is_err());
        assert!(judge_http(b"HTTP/1.1 abc\n", ok, None).is_err());
    }
}
