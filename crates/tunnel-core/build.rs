//! Decides whether `gcm.rs`'s vector-AES code is compiled (`cfg(ri_vector_aes)`): it needs an
//! x86_64 target and a compiler whose VAES, VPCLMULQDQ and AVX-512 target features and
//! intrinsics are stable (Rust 1.89). With an older compiler the crate still builds and every
//! TLS tunnel uses ring's AES-GCM, as on CPUs without those instructions.

use std::process::Command;

/// The first Rust release with the `vaes`, `vpclmulqdq` and `avx512*` target features stable.
const VECTOR_AES_SINCE_MINOR: u32 = 89;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(ri_vector_aes)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let mut parts = version.split_whitespace().nth(1).unwrap_or("").split('.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    let new_enough = matches!((major, minor), (Some(1), Some(m)) if m >= VECTOR_AES_SINCE_MINOR)
        || matches!(major, Some(m) if m > 1);
    if x86_64 && new_enough {
        println!("cargo:rustc-cfg=ri_vector_aes");
    } else {
        println!("cargo:warning=vector AES-GCM not compiled ({}; needs x86_64 and Rust 1.{VECTOR_AES_SINCE_MINOR}+): TLS tunnels use ring's AES-GCM", version.trim());
    }
}
