#!/usr/bin/env bash
# Writes scripts/hot-symbols.txt: the functions an `imgd serve --proxy-dhcp`
# runs from start through a 300-machine proxyDHCP storm, as callgrind saw them
# (mangled names, one per line). build.rs hands the file to the linker, which
# places those functions side by side at the front of .text.
#
# Why: the kernel maps a program's pages 64 KiB around each one touched, and
# the hot code of a server is a few hundred KiB scattered over 25 MB of .text
# (the AWS SDK is most of it). Packed together, an idle server maps ~4 MiB less
# of the binary (README, Performance).
#
# Symbol names carry a hash of the crate's version, features and profile (not
# its path or RUSTFLAGS), so the file fits every `cargo build --release` with
# this Cargo.lock and toolchain, with or without the AWS side (both are
# profiled). A build in CI's environment (.ci/run: clippy-driver as
# RUSTC_WORKSPACE_WRAPPER, -D warnings, incremental) names imgd's own
# functions differently (cargo hashes part of it into their crates), so the
# file holds both: a plain cargo build's names, as a user builds, and CI's.
# LLVM's `NAME.llvm.HASH` names change with any edit to imgd: the linker,
# scripts/linker-wrapper.sh, adds this build's names of each such NAME.
# After a toolchain or dependency update, names that no longer exist are
# skipped by the linker; re-run this script to profile again
# (`scripts/bench.sh storm` prints how many still match).
#
# Needs root (two network namespaces joined by a veth pair; nothing leaves
# them), valgrind and iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in valgrind python3; do
  command -v "$t" >/dev/null || { echo "hot-symbols.sh: needs $t (apt-get install $t)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "hot-symbols.sh: needs root for its network namespaces" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-$PWD/target}"
work=$(mktemp -d)
S="imgd-hot-s-$$" C="imgd-hot-c-$$"
srv=""
cleanup() {
  [ -z "$srv" ] || kill "$srv" 2>/dev/null || true
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q --example storm
ip netns add "$S"; ip netns add "$C"
ip -n "$S" link set lo up; ip -n "$C" link set lo up
ip -n "$S" link add eth0 type veth peer name eth0 netns "$C"
ip -n "$S" addr add 192.0.2.1/24 dev eth0; ip -n "$S" link set eth0 up
ip -n "$C" addr add 192.0.2.50/24 dev eth0; ip -n "$C" link set eth0 up
# A real build of hello in a store of its own, as every real server has:
# loading and checking its manifest is code each answer's path runs (an
# entry never built, or a toy manifest, skips some of it, and those functions
# land scattered: ~1.3 MiB more of the binary mapped under a storm). Needs
# what scripts/setup.sh fetched.
cargo build --release -q --bin imgd
entry=$(IMGD_STORE="$work/store" "$target/release/imgd" build hello --format ipxe --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
# A fleet's machines file: groups by MAC, by platform and by source network
# (200 racks, as in bench.sh storm: loading that many groups and matching
# each machine against all of them runs code a 4-group file does not, and
# that code lay scattered, ~0.6 MiB more of the binary mapped), then the
# default (matching them is each answer's work too).
cat > "$work/machines.toml" <<EOF
[[group]]
name = "by-mac"
entry = "$entry"
selector = { mac = ["52:54:00:12:34:56", "52:54:00:12:34:57"] }

[[group]]
name = "arm"
entry = "$entry"
selector = { arch = "arm64", platform = "efi" }

[[group]]
name = "fleet"
entry = "$entry"
default = true
EOF
for r in $(seq 1 200); do
  printf '[[group]]\nname = "rack-%s"\nentry = "%s"\nselector = { source = ["10.%s.0.0/16"] }\n' \
    "$r" "$entry" "$r" >> "$work/machines.toml"
done

# profile FEATURES...: one build of imgd, under callgrind through a storm.
# The status table holds 200 machines, so the storm's 300 fill it and it
# drops its oldest, as a server's table does under a 10,000-machine storm.
profile() {
  cargo build --release -q --bin imgd "$@"
  cp "${CARGO_TARGET_DIR:-$target}/release/imgd" "$work/imgd"
  IMGD_STORE="$work/store" ip netns exec "$S" valgrind -q --tool=callgrind --demangle=no \
    --callgrind-out-file="$work/callgrind.%p" "$work/imgd" serve --listen 192.0.2.1:8080 \
    --config "$work/machines.toml" --proxy-dhcp eth0 --status-machines 200 2>"$work/serve.log" &
  srv=$!
  local i
  for i in $(seq 1 600); do grep -q "listening on" "$work/serve.log" && break; sleep 0.1; done
  grep -q "listening on" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
  ip netns exec "$C" "$target/release/examples/storm" dhcp 300 5 >/dev/null
  kill -TERM "$srv"; wait "$srv" || true; srv=""
}
profile
profile --no-default-features
# The same in CI's environment (its own target folder, as .ci/run keeps).
# The linker too, at .ci/run's path: the linker's path is part of every
# unit's fingerprint, and another one rebuilt all of CI's dependencies here
# and again at CI's next run (8-9 min each).
ci() {
  local dir="${IMGD_CI_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imgd-ci/target}"
  mkdir -p "$dir"
  cp scripts/linker-wrapper.sh "$(dirname "$dir")/linker-wrapper.sh.new"
  mv "$(dirname "$dir")/linker-wrapper.sh.new" "$(dirname "$dir")/linker-wrapper.sh"
  CARGO_TARGET_DIR="$dir" CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER="$(dirname "$dir")/linker-wrapper.sh" \
    RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver)" RUSTFLAGS="-D warnings" \
    CARGO_PROFILE_RELEASE_INCREMENTAL=true "$@"
}
ci profile
ci profile --no-default-features

# fn=(id) name and cfn=(id) name lines name each function once; callgrind
# marks recursion depth with 'N, and only Rust's names (_ZN legacy, _R v0) are
# ours to order (libc's are in another file).
cat "$work"/callgrind.* | sed -nE "s/^c?fn=\([0-9]+\) (_ZN|_R)/\1/p" | sed -E "s/'[0-9]+$//" \
  | LC_ALL=C sort -u > scripts/hot-symbols.txt
echo "hot-symbols.sh: $(wc -l < scripts/hot-symbols.txt) functions in scripts/hot-symbols.txt"
