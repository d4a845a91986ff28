#!/usr/bin/env bash
# Builds an iPXE that verifies everything it boots (Debian's is built without
# `imgverify`): IMAGE_TRUST_CMD on, CA_CERT trusted (and nothing else), and
# pxe/verify-embed.ipxe built in. Use the results with `imgd serve --ipxe-dir OUT`.
#
#   scripts/build-verifying-ipxe.sh IPXE_SRC CA_CERT OUT
#
# IPXE_SRC is an iPXE source tree (git clone https://github.com/ipxe/ipxe);
# CA_CERT (PEM) the root that signed the certificate in machines.toml's
# [ipxe_signing]. OUT gets snponly.efi (UEFI) and undionly.kpxe (BIOS).
set -Eeuo pipefail
[ $# = 3 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
src=$(realpath "$1")/src
ca=$(realpath "$2")
out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$src/Makefile" ] || { echo "$1: not an iPXE source tree (no src/Makefile)" >&2; exit 2; }
openssl x509 -in "$ca" -noout 2>/dev/null || { echo "$2: not a PEM certificate" >&2; exit 2; }
# Local configuration, the way iPXE's docs recommend (config/local/ is
# iPXE's own place for it, not tracked by its git).
mkdir -p "$src/config/local"
cat > "$src/config/local/general.h" <<'H'
#define IMAGE_TRUST_CMD	/* imgtrust, imgverify */
H
mkdir -p "$out"
# TRUST= replaces iPXE's default root (ca.ipxe.org): only CA_CERT is trusted.
# CERT= builds the root certificate itself in too: TRUST holds only its
# fingerprint, and a chain must end in the certificate to be checked, so
# signatures need not carry the root.
make -C "$src" -j"$(nproc)" --no-print-directory \
    bin-x86_64-efi/snponly.efi bin/undionly.kpxe \
    EMBED="$here/pxe/verify-embed.ipxe" TRUST="$ca" CERT="$ca" >&2
cp "$src/bin-x86_64-efi/snponly.efi" "$src/bin/undionly.kpxe" "$out/"
echo "$out: snponly.efi undionly.kpxe (trusting $(openssl x509 -in "$ca" -noout -subject))"
