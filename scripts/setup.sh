#!/usr/bin/env bash
# Installs what imgd and its tests need on Debian (bookworm) and fetches the test
# assets (a Debian kernel and busybox-static .debs) into the deb cache.
# Idempotent: re-running installs nothing new and downloads only what changed.
set -euo pipefail

cache="${IMGD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgd}"
debs="$cache/debs"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=(
  qemu-system-x86 qemu-utils    # together: a newer qemu-utils alone blocks qemu-system-x86
  ovmf ipxe-qemu seabios         # UEFI and BIOS firmware, iPXE NIC ROMs
  ipxe                           # serve --proxy-dhcp: undionly.kpxe, snponly.efi for PXE firmware
  dnsmasq-base iproute2          # netboot tests: the site's DHCP server (addresses only), netns + bridge
  qemu-system-arm qemu-efi-aarch64   # aarch64 guests and their UEFI (AAVMF)
  systemd-boot-efi               # the EFI loader on disk images, the stub of unified kernel images
  sbsigntool openssl             # imgd sign (sbsign), its checks (sbverify) and test keys
  systemd                        # systemd-measure: the independent check of the manifest's PCR 11
  grub-pc-bin grub-common        # GRUB for BIOS disk images (grub-mkimage, i386-pc modules)
  e2fsprogs dosfstools mtools fdisk   # mkfs.ext4/debugfs/fsck, fsck.vfat, mformat/mcopy, sfdisk
  kmod busybox-static cpio zstd  # depmod; initrd checks
  mmdebstrap gpgv debian-archive-keyring   # Debian bases: assembly, index signatures
  gpg                            # tests sign an archive of their own
  openssh-client                 # boot tests log in over SSH
  curl                           # server tests
  b3sum                          # checks the manifest's BLAKE3 digests as a user would
  locales                        # a reproducibility test builds under another locale
  nginx-light wrk                # scripts/bench.sh serve: the server to compare with, the load
  tmux                           # imgd compose connect: one pane per machine
  tcpdump                        # reads imgd compose --pcap captures, as a user would
  chromium                       # the status page rendered by a real (headless) browser
)

# arm64 package lists, to download the aarch64 test kernel and busybox.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -q >/dev/null
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  # Pin both qemu packages to this release: the machine image may carry a
  # backported qemu-utils that would otherwise block qemu-system-x86.
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  want=()
  for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86 | qemu-utils | qemu-system-arm) ;; *) want+=("$p") ;; esac
  done
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
    "qemu-system-x86/$codename" "qemu-utils/$codename" "qemu-system-arm/$codename" "${want[@]}" >/dev/null
else
  echo "setup: packages present"
fi

# pip's own exit code decides; only its as-root warning is filtered out.
pip_install() {
  local rc=0
  python3 -m pip install -q "$@" 2>&1 | { grep -v "Running pip as the 'root' user" || true; } || rc=$?
  return "$rc"
}

# A local AWS endpoint (and boto3, the independent client) for the sync tests.
# Pinned: moto 5.2.1 answered CompleteMultipartUpload with the wrong XML root
# (getmoto/moto#10055), which the Rust SDK rightly rejects.
moto_version=5.2.5
if ! command -v moto_server >/dev/null || ! python3 -c "import boto3, moto; assert moto.__version__ == '$moto_version'" 2>/dev/null; then
  echo "setup: installing moto[server]==$moto_version"
  pip_install "moto[server]==$moto_version" && python3 -c "import boto3, moto; assert moto.__version__ == '$moto_version'" ||
    { echo "setup: moto $moto_version did not install (see pip's output above)" >&2; exit 1; }
fi

# Secure Boot tests enrol their own keys into a copy of OVMF's variable store.
if ! command -v virt-fw-vars >/dev/null; then
  echo "setup: installing virt-firmware"
  pip_install "virt-firmware==26.10" && command -v virt-fw-vars >/dev/null ||
    { echo "setup: virt-firmware did not install (see pip's output above)" >&2; exit 1; }
fi

mkdir -p "$debs"
chmod 755 "$cache" "$debs"
# The current Debian kernel of each architecture, busybox-static, and (for
# aarch64 disks) systemd-boot's EFI binary.
kernel_of() {
  apt-cache depends "linux-image-$1:$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {sub(/:.*/, "", $2); print $2; exit}'
}
# Each package's candidate version, asked of apt-cache once for all of them
# (one call per package took ~25 s of every run).
native=$(dpkg --print-architecture)
declare -A candidate
candidates() {
  local key ver
  while read -r key ver; do candidate[$key]=$ver; done < <(
    apt-cache policy "$@" 2>/dev/null | awk -v native="$native" '
      /^[^ ]/ { name = $0; sub(/:$/, "", name); if (name !~ /:/) name = name ":" native; next }
      /^  Candidate:/ { print name, $2 }'
  )
}
fetch() {
  local pkg=$1 arch=$2 ver
  ver=${candidate[$pkg:$arch]:-}
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || { echo "setup: no candidate for $pkg:$arch" >&2; return 1; }
  if [ -f "$debs/${pkg}_${ver//:/%3a}_$arch.deb" ]; then
    echo "setup: $pkg $ver $arch cached"
    return
  fi
  echo "setup: downloading $pkg $ver $arch"
  # Drop older versions so the cache names one version per package and arch.
  rm -f "$debs/${pkg}_"*"_$arch.deb"
  (cd "$debs" && apt-get download -q "$pkg:$arch" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  ls "$debs/${pkg}_"*"_$arch.deb" >/dev/null
}
wanted=()
kernels=()
for arch in amd64 arm64; do
  k=$(kernel_of "$arch")
  [ -n "$k" ] || { $sudo apt-get update -q >/dev/null; k=$(kernel_of "$arch"); }
  [ -n "$k" ] || { echo "setup: no Debian kernel package for $arch" >&2; exit 1; }
  kernels+=("${k}_")
  # The kernel, busybox-static; for [scratch] on a busybox base, mke2fs,
  # mkfs.xfs and mdadm with their libraries; for profiles/builder.toml,
  # dropbear and the libraries it links.
  for pkg in "$k" busybox-static libc6 e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 \
    xfsprogs libinih1 liburcu8 mdadm libudev1 dropbear-bin libcrypt1 libtomcrypt1 libtommath1 libgmp10 zlib1g; do
    wanted+=("$pkg:$arch")
  done
done
wanted+=("systemd-boot-efi:arm64")
candidates "${wanted[@]}"
for w in "${wanted[@]}"; do
  fetch "${w%:*}" "${w##*:}"
done
# Older kernels left from a previous setup would make `linux-image-[0-9]*` ambiguous.
for old in "$debs"/linux-image-*.deb; do
  keep=0
  for k in "${kernels[@]}"; do case "$old" in *"/$k"*) keep=1 ;; esac; done
  [ "$keep" = 1 ] || rm -f "$old"
done
echo "setup: deb cache $debs:"
ls -1 "$debs"
