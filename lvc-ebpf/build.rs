//! Compiles `src/bpf/lvc_xdp.c` (lvc's steering program) and
//! `src/bpf/bench_xdp.c` (lvc-bench's generator, sink and reference
//! forwarders) and `src/bpf/pass_xdp.c` (an XDP_PASS program for veth
//! peers in test labs) into BPF objects that `lib.rs` embeds.
//!
//! The compiler is `clang-19` unless `LVC_BPF_CLANG` names another one.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LVC_BPF_CLANG");
    for name in ["lvc_xdp", "bench_xdp", "pass_xdp"] {
        compile(name);
    }
}

fn compile(name: &str) {
    let src = format!("src/bpf/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    let clang = env::var("LVC_BPF_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join(format!("{name}.o"));
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include/x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", &src, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run BPF compiler `{clang}`: {e}. Install clang-19 and libbpf-dev \
                 (`cargo xtask deps`) or set LVC_BPF_CLANG"
            )
        });
    assert!(status.success(), "`{clang}` failed to compile {src}");
}
