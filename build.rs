//! Links imgd's binaries with packed relative relocations (DT_RELR) where the
//! linker and the C library take them. The AWS SDK leaves ~120,000 relative
//! relocations: 2.9 MB of `.rela.dyn` that every imgd process reads and applies
//! as it starts, and that stays in its memory. Packed they are ~30 KB, and an
//! idle `imgd serve --proxy-dhcp` holds 13.3 MiB instead of 17.0 (measured on
//! Debian 12). The binary stays position-independent. Where the linker lacks
//! `-z pack-relative-relocs` or glibc is older than 2.36 (which could not load
//! such a binary), nothing changes.
//!
//! And, where the linker takes an ordering file (LLD, Rust's default linker on
//! x86_64 Linux), it places the functions a serving imgd runs side by side
//! (`scripts/hot-symbols.txt`; `scripts/hot-symbols.sh` says why and makes it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native_gnu_linux =
        var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" && var("HOST") == var("TARGET");
    if native_gnu_linux && linker_packs() && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    hot_symbols();
}

/// Names missing from the binary (another toolchain, updated dependencies)
/// are skipped without a warning: the order is an optimization, never needed.
fn hot_symbols() {
    let file = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("scripts/hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", file.display());
    if !file.is_file() {
        return;
    }
    let args = [format!("-Wl,--symbol-ordering-file={}", file.display()), "-Wl,--no-warn-symbol-ordering".to_string()];
    if links_with(&args) {
        for a in args {
            println!("cargo:rustc-link-arg-bins={a}");
        }
    }
}

/// Whether rustc, with this build's linker and flags, links an empty program
/// with `args`: GNU ld, for one, refuses --symbol-ordering-file.
fn links_with(args: &[String]) -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let out = PathBuf::from(var("OUT_DIR"));
    let src = out.join("link-probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut c = Command::new(rustc);
    c.arg(&src).arg("-o").arg(out.join("link-probe")).arg("--target").arg(var("TARGET"));
    c.args(var("CARGO_ENCODED_RUSTFLAGS").split('\x1f').filter(|f| !f.is_empty()));
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        c.arg("-C").arg(format!("linker={linker}"));
    }
    for a in args {
        c.arg("-C").arg(format!("link-arg={a}"));
    }
    c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &str, arg: &str) -> String {
    Command::new(cmd).arg(arg).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn linker_packs() -> bool {
    output("ld", "--help").contains("pack-relative-relocs")
}

/// `getconf GNU_LIBC_VERSION` says e.g. `glibc 2.36`.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let v = output("getconf", "GNU_LIBC_VERSION");
    let mut nums = v.trim().strip_prefix("glibc ").unwrap_or("").split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0)) >= (major, minor)
}
