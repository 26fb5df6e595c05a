//! Interrupt moderation (`--coalesce-usecs`): while frames reach a worker
//! often, it naps between batches instead of being woken by each frame —
//! and nothing a user sees changes but the CPU it takes. (These tests start
//! lvc with `--offload off`, so that every segment goes through a worker.)

use lvc_tests::privileged;
use lvc_tests::topo::{Arms, Topo, VIP};
use std::time::{Duration, Instant};

/// Sends `argv[2]` numbered UDP datagrams to VIP:7, one every 50 µs (a
/// spin on the clock), and reads the echoes as they come; prints how many
/// came back unchanged, once no more come for a second.
const PACED: &str = r#"
import socket, sys, time
n = int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.connect((sys.argv[1], 7))
# Until the first echo: every neighbour on the way is resolved.
s.settimeout(0.2)
for _ in range(50):
    s.send(b"warm")
    try:
        if s.recv(2048) == b"warm":
            break
    except socket.timeout:
        pass
while True:
    try:
        s.recv(2048)
    except socket.timeout:
        break
s.setblocking(False)
seen = set()
def datagram(i):
    return b"%d " % i + b"x" * (i % 300)
def note(d):
    i = int(d.split(b" ")[0])
    if d == datagram(i):
        seen.add(i)
def drain():
    while True:
        try:
            note(s.recv(2048))
        except BlockingIOError:
            return
t = time.perf_counter()
for i in range(n):
    s.send(datagram(i))
    t += 50e-6
    while time.perf_counter() < t:
        pass
    if i % 64 == 0:
        drain()
s.setblocking(True)
s.settimeout(1.0)
try:
    while len(seen) < n:
        note(s.recv(2048))
except socket.timeout:
    pass
print(len(seen))
"#;

/// Streams 10 000 datagrams (one every 50 µs) to a `nat` VIP with the
/// workers' moderation set to `usecs`, and meanwhile echoes numbered lines
/// over a TCP connection through the same VIP: every line must come back
/// unchanged. Returns (naps, waits) from `lvc-ctl status`.
fn echo_while_paced(tag: &str, usecs: &str) -> (u64, u64) {
    let mut t = Topo::build(tag, Arms::Two, 2, 1);
    t.start_servers();
    t.start_lvc_with(&["--offload", "off", "--coalesce-usecs", usecs]);
    t.add_service("udp", 7, "nat");
    t.add_service("tcp", 7, "nat");
    let mut session = t.echo_session(7);
    let n = 10_000;
    t.lab.spawn(
        "client",
        "pacer",
        &["/usr/bin/python3", "-c", PACED, VIP, &n.to_string()],
    );
    let mut lines = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.lab.log("pacer").trim().is_empty() || lines < 100 {
        assert!(Instant::now() < deadline, "the pacer did not finish");
        let line = format!("line {lines} {}\n", "x".repeat(lines * 7 % 900));
        assert_eq!(
            session.echo(&line),
            line,
            "--coalesce-usecs {usecs}: line {lines} came back changed"
        );
        lines += 1;
    }
    let (naps, waits) = (t.counter("worker_naps"), t.counter("worker_waits"));
    let status = t.ctl_ok(&["status"]);
    let echoed: usize = t
        .lab
        .log("pacer")
        .trim()
        .parse()
        .expect("the pacer's count");
    eprintln!(
        "--coalesce-usecs {usecs}: {lines} lines echoed over TCP, {echoed} of {n} datagrams\n{status}"
    );
    // (UDP: the lab's veth rings may drop a few when its CPUs are busy,
    // whatever lvc does; the TCP lines above are the exact check.)
    assert!(
        echoed >= n * 9 / 10,
        "--coalesce-usecs {usecs}: {echoed} of {n} datagrams echoed\n{status}"
    );
    (naps, waits)
}

#[test]
fn workers_nap_while_frames_come_often_and_lose_nothing() {
    if !privileged("workers_nap_while_frames_come_often_and_lose_nothing") {
        return;
    }
    let (naps, waits) = echo_while_paced("coal", "100");
    assert!(
        naps > 0,
        "datagrams every 50 µs make the workers nap ({naps} naps, {waits} waits)"
    );
    let (naps, waits) = echo_while_paced("coal0", "0");
    assert_eq!(
        naps, 0,
        "--coalesce-usecs 0: the workers never nap ({waits} waits)"
    );
    assert!(waits > 0, "--coalesce-usecs 0: the workers wait for frames");
}
