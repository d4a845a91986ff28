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
  systemd-boot-efi               # the EFI loader on disk images
  grub-pc-bin grub-common        # GRUB for BIOS disk images (grub-mkimage, i386-pc modules)
  e2fsprogs dosfstools mtools fdisk   # mkfs.ext4/debugfs/fsck, fsck.vfat, mformat/mcopy, sfdisk
  kmod busybox-static cpio zstd  # depmod; initrd checks
  debootstrap                    # the debian profile's base
  openssh-client                 # boot tests log in over SSH
  curl                           # server tests
)

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
    case "$p" in qemu-system-x86 | qemu-utils) ;; *) want+=("$p") ;; esac
  done
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
    "qemu-system-x86/$codename" "qemu-utils/$codename" "${want[@]}" >/dev/null
else
  echo "setup: packages present"
fi

mkdir -p "$debs"
chmod 755 "$cache" "$debs"
kernel=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel" ]; then
  $sudo apt-get update -q
  kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
fetch() {
  local pkg=$1 ver
  ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  if ls "$debs/${pkg}_${ver//:/%3a}_"*.deb >/dev/null 2>&1; then
    echo "setup: $pkg $ver cached"
    return
  fi
  echo "setup: downloading $pkg $ver"
  # Drop older versions so the cache names one package version.
  rm -f "$debs/${pkg}_"*.deb
  (cd "$debs" && apt-get download -q "$pkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  ls "$debs/${pkg}_"*.deb >/dev/null
}
fetch "$kernel"
fetch busybox-static
# Older kernels left from a previous setup would make `linux-image-[0-9]*` ambiguous.
for old in "$debs"/linux-image-*.deb; do
  case "$old" in *"/${kernel}_"*) ;; *) rm -f "$old" ;; esac
done
echo "setup: deb cache $debs:"
ls -1 "$debs"
