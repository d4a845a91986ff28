#!/usr/bin/env bash
# The linker cargo runs for x86_64 Linux builds in this repository
# (.cargo/config.toml): `cc`, as rustc would run it, with one thing added.
#
# build.rs hands imgd's binaries scripts/hot-symbols.txt as the linker's
# function order. Many of imgd's own functions are named `NAME.llvm.HASH`
# there: LLVM renames a function it shares between two parts of a crate, and
# HASH is made from that part's code. Any edit to imgd changes the HASHes of
# the parts it touches, and the linker skips names it cannot find: one
# four-line edit left 1,275 of 1,357 hot functions laid out, and the DHCP
# storm's peak memory went from 8.7 to 9.7 MiB. So, for each listed
# `NAME.llvm.HASH`, this adds the `NAME.llvm.*` that imgd's own objects define
# now (its crates' object files and rlibs; the dependencies' names do not
# change with imgd's code). The file it writes lives in a private folder
# removed after the link. Anything unexpected links as plain `cc` would.
set -uo pipefail

order=""
for a in "$@"; do
  case "$a" in -Wl,--symbol-ordering-file=*) order="${a#-Wl,--symbol-ordering-file=}" ;; esac
done
if [ -z "$order" ] || [ ! -f "$order" ] || ! command -v nm >/dev/null; then exec cc "$@"; fi

# imgd's own code: the objects of the crate being linked and the rlibs of
# the workspace's crates (libimgd, libimgd_aws).
own=()
for a in "$@"; do
  case "$a" in
    *.rcgu.o | */libimgd-*.rlib | */libimgd_aws-*.rlib) [ -f "$a" ] && own+=("$a") ;;
  esac
done
[ "${#own[@]}" -gt 0 ] || exec cc "$@"

dir=$(mktemp -d) || exec cc "$@"
trap 'rm -rf "$dir"' EXIT
# Every listed name, each followed by the names it has in this build.
# (nm also meets each rlib's metadata member, which is not an object.)
if { nm --defined-only --format=just-symbols "${own[@]}" 2>/dev/null || true; } | grep -F '.llvm.' > "$dir/now" &&
  awk 'NR == FNR { base = $0; sub(/\.llvm\.[0-9]+$/, "", base); now[base] = now[base] $0 "\n"; next }
       { print; if ($0 ~ /\.llvm\.[0-9]+$/) { base = $0; sub(/\.llvm\.[0-9]+$/, "", base); printf "%s", now[base] } }' \
    "$dir/now" "$order" > "$dir/order"; then
  args=()
  for a in "$@"; do
    case "$a" in
      -Wl,--symbol-ordering-file=*) args+=("-Wl,--symbol-ordering-file=$dir/order") ;;
      *) args+=("$a") ;;
    esac
  done
  cc "${args[@]}"
else
  cc "$@"
fi
