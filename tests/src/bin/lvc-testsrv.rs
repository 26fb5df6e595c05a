//! A tiny real server for tests: HTTP that answers with its name, a TCP
//! echo and a UDP echo. Runs until killed.
//!
//! `lvc-testsrv NAME [--http PORT] [--tcp-echo PORT] [--udp-echo PORT]
//!  [--udp-echo-at ADDR:PORT]` (the last binds one address: a UDP server
//! behind direct routing must answer from the VIP it was asked on).
//!
//! `lvc-testsrv probe ADDR:PORT TOS COUNT` is the client side of a
//! latency probe: COUNT UDP echoes 20 ms apart with that TOS byte (300 ms
//! timeout each); prints
//! each round trip in µs and then `median_us N` (lost ones are skipped).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::thread;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        return probe(&args[1..]);
    }
    let name = args.first().cloned().unwrap_or_else(|| "server".into());
    let mut handles = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"))
            .clone();
        let port = || -> u16 {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: bad port {value}"))
        };
        let name = name.clone();
        handles.push(match flag.as_str() {
            "--http" => {
                let port = port();
                thread::spawn(move || serve_tcp(port, move |s| http(s, &name)))
            }
            "--tcp-echo" => {
                let port = port();
                thread::spawn(move || serve_tcp(port, tcp_echo))
            }
            "--udp-echo" => {
                let addr = format!("[::]:{}", port());
                thread::spawn(move || udp_echo(&addr))
            }
            "--udp-echo-at" => thread::spawn(move || udp_echo(&value)),
            other => panic!("unknown option {other}"),
        });
    }
    for h in handles {
        let _ = h.join();
    }
}

fn serve_tcp(port: u16, handler: impl Fn(TcpStream) + Send + Sync + Clone + 'static) {
    // One dual-stack socket: IPv4 and IPv6 clients alike.
    let sa = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
        .expect("tcp socket");
    sock.set_only_v6(false).expect("IPV6_V6ONLY off");
    sock.set_reuse_address(true).expect("SO_REUSEADDR");
    sock.bind(&sa.into())
        .unwrap_or_else(|e| panic!("bind tcp {port}: {e}"));
    sock.listen(128).expect("listen");
    let l: TcpListener = sock.into();
    for s in l.incoming().flatten() {
        let h = handler.clone();
        thread::spawn(move || h(s));
    }
}

/// Answers every request on the connection with `NAME\n`.
fn http(s: TcpStream, name: &str) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let body = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn tcp_echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

fn udp_echo(addr: &str) {
    // SO_REUSEADDR on every echo socket, so one bound to a specific address
    // (the VIP) can sit beside the wildcard one.
    let sa: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("udp address {addr}: {e}"));
    let sock = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::DGRAM, None)
        .expect("udp socket");
    sock.set_reuse_address(true).expect("SO_REUSEADDR");
    if sa.is_ipv6() {
        sock.set_only_v6(false).expect("IPV6_V6ONLY off");
    }
    sock.bind(&sa.into())
        .unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
    let s: UdpSocket = sock.into();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let _ = s.send_to(&buf[..n], from);
    }
}

fn probe(args: &[String]) {
    let [to, tos, count] = args else {
        panic!("usage: lvc-testsrv probe ADDR:PORT TOS COUNT");
    };
    let to: std::net::SocketAddr = to.parse().expect("ADDR:PORT");
    let tos = u32::from_str_radix(tos.trim_start_matches("0x"), 16).expect("TOS in hex");
    let count: usize = count.parse().expect("COUNT");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .expect("udp socket");
    sock.set_tos(tos).expect("IP_TOS");
    let s: UdpSocket = sock.into();
    s.connect(to).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .expect("timeout");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..count as u64 {
        let t = std::time::Instant::now();
        s.send(&i.to_be_bytes()).expect("send");
        // Skip late answers to earlier probes.
        while let Ok(n) = s.recv(&mut buf) {
            if n == 8 && buf[..8] == i.to_be_bytes() {
                let us = t.elapsed().as_micros();
                println!("{us}");
                rtts.push(us);
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rtts.sort_unstable();
    println!(
        "median_us {}",
        rtts.get(rtts.len() / 2).copied().unwrap_or(0)
    );
}
