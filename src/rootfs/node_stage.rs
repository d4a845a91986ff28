//! The node stage: a short script every image carries at
//! `/lib/imgd/node-init` that gives a machine its identity in a composition
//! (`imgd compose`) from the kernel command line, then hands over to the
//! image's own init. It does nothing an image would not do on its own unless
//! the command line asks for it (`rdinit=`/`init=` must name it), so the
//! image a composition tests is byte for byte the one that is shipped.
//!
//! Command line (Debian's kernel has no `CONFIG_IP_PNP`, so `ip=` does nothing):
//! - `imgd.node=NAME`: hostname;
//! - `imgd.net=MAC,ADDR/PREFIX` (repeatable): the interface with that MAC
//!   (found through sysfs, never by name) gets the address and comes up;
//! - `imgd.hosts=ADDR,NAME,ROLE*N,…` (repeatable, one per network): names for
//!   consecutive addresses from ADDR; `ROLE*N` stands for ROLE1..ROLEN;
//! - `imgd.init=PATH`: what runs next (default `/sbin/init`).
//!
//! When the machine has a virtio-serial port named `org.imgd.agent` (only
//! the VMs `imgd compose` starts have one), a command loop runs on it: a
//! line `NONCE SECONDS BASE64` runs the decoded script with `sh` for at most
//! SECONDS and answers `NONCE STATUS BASE64-OUTPUT` (stdout and stderr).

use super::error::Result;
use super::tree::Tree;

pub const PATH: &str = "/lib/imgd/node-init";
/// The modules the stage loads (the hardware's, in load order), one per line.
const MODULES: &str = "/lib/imgd/modules";

/// The script (an input of every build's hash: a change rebuilds).
pub(crate) const SCRIPT: &str = r#"
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
bb=
[ -x /bin/busybox ] && bb=/bin/busybox
$bb mount -t proc proc /proc 2>/dev/null
$bb mount -t sysfs sysfs /sys 2>/dev/null
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
$bb mkdir -p /run/imgd /tmp
v=$($bb uname -r)
while read -r m; do $bb insmod "/lib/modules/$v/$m" 2>/dev/null; done < /lib/imgd/modules
node=
next=/sbin/init
nets=
hosts=
for a in $($bb cat /proc/cmdline); do
  case "$a" in
    imgd.node=*) node=${a#imgd.node=} ;;
    imgd.init=*) next=${a#imgd.init=} ;;
    imgd.net=*) nets="$nets ${a#imgd.net=}" ;;
    imgd.hosts=*) hosts="$hosts ${a#imgd.hosts=}" ;;
  esac
done
if [ -n "$node" ]; then
  echo "$node" > /etc/hostname
  $bb hostname "$node"
fi
$bb ip link set lo up 2>/dev/null
for n in $nets; do
  mac=${n%%,*}
  addr=${n#*,}
  dev=
  i=0
  while [ -z "$dev" ] && [ $i -lt 50 ]; do
    for d in /sys/class/net/*; do
      [ "$($bb cat "$d/address" 2>/dev/null)" = "$mac" ] && dev=${d##*/}
    done
    [ -n "$dev" ] || { $bb sleep 0.1; i=$((i + 1)); }
  done
  if [ -z "$dev" ]; then
    echo "imgd: no interface with MAC $mac"
    continue
  fi
  $bb ip addr add "$addr" dev "$dev"
  $bb ip link set "$dev" up
done
ipn() { o1=${1%%.*}; r=${1#*.}; o2=${r%%.*}; r=${r#*.}; o3=${r%%.*}; o4=${r#*.}; echo $(( (o1 << 24) + (o2 << 16) + (o3 << 8) + o4 )); }
ips() { echo "$(($1 >> 24 & 255)).$(($1 >> 16 & 255)).$(($1 >> 8 & 255)).$(($1 & 255))"; }
for h in $hosts; do
  IFS=,
  set -- $h
  unset IFS
  n=$(ipn "$1")
  shift
  for name; do
    case "$name" in
      *\**)
        j=1
        while [ $j -le "${name#*\*}" ]; do
          echo "$(ips $n)	${name%\**}$j" >> /etc/hosts
          n=$((n + 1)); j=$((j + 1))
        done ;;
      *) echo "$(ips $n)	$name" >> /etc/hosts; n=$((n + 1)) ;;
    esac
  done
done
agent() {
  exec 3<>"$1"
  while :; do
    while read -r nonce secs cmd <&3; do
      [ -n "$nonce" ] || continue
      # Again each time: an init such as systemd mounts a fresh /run.
      $bb mkdir -p /run/imgd
      printf '%s' "$cmd" | $bb base64 -d > /run/imgd/cmd 2>/dev/null
      $bb timeout "$secs" $bb sh /run/imgd/cmd > /run/imgd/out 2>&1 < /dev/null
      rc=$?
      printf '%s %s %s\n' "$nonce" "$rc" "$($bb base64 /run/imgd/out | $bb tr -d '\n')" >&3
    done
    $bb sleep 0.2
  done
}
i=0
while [ $i -lt 20 ]; do
  for p in /sys/class/virtio-ports/*; do
    if [ "$($bb cat "$p/name" 2>/dev/null)" = org.imgd.agent ]; then
      [ -e "/dev/${p##*/}" ] && { agent "/dev/${p##*/}" & i=99; }
    fi
  done
  [ $i -eq 99 ] || { [ -n "$node" ] || break; $bb sleep 0.1; i=$((i + 1)); }
done
exec "$next"
"#;

/// Adds the stage when the image has a shell to run it (busybox's, or
/// `/bin/sh`); an image without one cannot take part in a composition.
pub(crate) fn install(tree: &mut Tree, boot_modules: &[String]) -> Result<bool> {
    let has = |p: &str| tree.get(p).is_some();
    let shell = if has("/bin/busybox") {
        "/bin/busybox sh"
    } else if has("/bin/sh") {
        "/bin/sh"
    } else {
        return Ok(false);
    };
    let modules: String = boot_modules.iter().map(|m| format!("{m}\n")).collect();
    tree.add_bytes(MODULES, modules.as_bytes(), 0o644)?;
    let script = format!("#!{shell}\n# imgd node stage (see imgd's src/rootfs/node_stage.rs){SCRIPT}");
    tree.add_bytes(PATH, script.as_bytes(), 0o755)?;
    Ok(true)
}
