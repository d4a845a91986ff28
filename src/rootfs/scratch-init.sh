# Runs as init (pid 1) on busybox; see src/rootfs/scratch.rs. Disks are
# selected by what sysfs says they are, never by their names.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
bb=/bin/busybox
$bb mount -t proc proc /proc 2>/dev/null
$bb mount -t sysfs sysfs /sys 2>/dev/null
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
# A /run of our own, so the report survives an init (systemd) that would
# otherwise mount a fresh one over it.
$bb mountpoint -q /run 2>/dev/null || $bb mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null
$bb mkdir -p /run/imgd
v=$($bb uname -r)
while read -r m; do $bb insmod "/lib/modules/$v/$m" 2>/dev/null; done < /lib/imgd/modules

fail() {
  echo "imgd: scratch FAILED: $*"
  echo "imgd: scratch: powering off; the image's init was not started"
  $bb sync
  $bb poweroff -f
  exit 1
}

# The disks under / and any other mounted filesystem or swap: never touched.
busy=
busy_dev() {
  l=$($bb readlink -f "/sys/class/block/${1##*/}" 2>/dev/null) || return 0
  [ -e "$l/partition" ] && l=${l%/*}
  busy="$busy ${l##*/}"
}
d=$($bb mountpoint -d / 2>/dev/null) && {
  l=$($bb readlink -f "/sys/dev/block/$d" 2>/dev/null) && busy_dev "$l"
}
for dev in $($bb awk '$1 ~ "^/dev/" {print $1}' /proc/mounts) $($bb awk 'NR > 1 {print $1}' /proc/swaps); do
  busy_dev "$dev"
done

# One line of a sysfs attribute, trimmed (nvme pads serials with spaces);
# shell builtins only: this runs for every disk each time the list is read.
attr() {
  v=
  for f in "$1/$2" "$1/device/$2"; do
    [ -r "$f" ] && { read -r v < "$f" 2>/dev/null; break; }
  done
  v=${v%"${v##*[! ]}"}
  echo "${v#"${v%%[! ]*}"}"
}

# "bytes name" of each disk that qualifies, largest first.
candidates() {
  for s in /sys/block/*; do
    n=${s##*/}
    # Virtual block devices (loop, ram, zram, md, dm, nbd) have no device.
    [ -e "$s/device" ] || continue
    [ -d "$s/loop" ] || [ -d "$s/md" ] || [ -d "$s/dm" ] && continue
    read -r r < "$s/removable" && [ "$r" = 0 ] || continue
    read -r r < "$s/ro" && [ "$r" = 0 ] || continue
    case " $busy " in *" $n "*) continue ;; esac
    set -- "$s"/holders/*
    [ -e "$1" ] && continue
    read -r sectors < "$s/size"
    bytes=$((sectors * 512))
    [ "$bytes" -gt 0 ] && [ "$bytes" -ge "$min_bytes" ] || continue
    if [ -n "$serial_glob" ]; then
      v=$(attr "$s" serial)
      case "$v" in $serial_glob) ;; *) continue ;; esac
    fi
    if [ -n "$model_glob" ]; then
      v=$(attr "$s" model)
      case "$v" in $model_glob) ;; *) continue ;; esac
    fi
    echo "$bytes $n"
  done | $bb sort -rn
}

# Disks appear as their drivers probe: wait until the wanted count is there,
# or ("all") until the list has not changed for a second; 10 s at most.
list=
same=0
i=0
while [ $i -lt 40 ]; do
  now=$(candidates)
  count=$(echo "$now" | $bb grep -c .)
  [ "$want" != all ] && [ "$count" -ge "$want" ] && { list=$now; break; }
  if [ "$now" = "$list" ]; then same=$((same + 1)); else same=0; fi
  list=$now
  [ "$want" = all ] && [ $same -ge 4 ] && break
  $bb sleep 0.25
  i=$((i + 1))
done
[ "$want" = all ] || list=$(echo "$list" | $bb head -n "$want")
[ "$layout" = single ] && list=$(echo "$list" | $bb head -n 1)
disks=$(echo "$list" | $bb awk 'NF {print $2}')
count=$(echo "$disks" | $bb grep -c .)
[ "$want" = all ] || [ "$count" -ge "$want" ] || echo "imgd: scratch: $want disks wanted, $count found"

wipe() {
  sectors=$($bb cat "/sys/block/$1/size")
  n=2048
  [ "$sectors" -lt 4096 ] && n=$((sectors / 2))
  # Partition tables (GPT at both ends), filesystem and md superblocks all
  # live in the first or last MiB.
  tail=$((sectors - n))
  # 4 KiB blocks where the tail is aligned to them (far fewer writes).
  if [ $((tail % 8)) = 0 ] && [ $((n % 8)) = 0 ]; then bs=4096 k=8; else bs=512 k=1; fi
  $bb dd if=/dev/zero of="/dev/$1" bs=$bs count=$((n / k)) conv=fsync 2>/dev/null &&
    $bb dd if=/dev/zero of="/dev/$1" bs=$bs seek=$((tail / k)) count=$((n / k)) conv=fsync 2>/dev/null ||
    fail "cannot wipe /dev/$1"
  $bb blockdev --rereadpt "/dev/$1" 2>/dev/null
  return 0
}

# A fresh UUID each boot, from the kernel, reported as made.
mkfs() {
  uuid=$($bb cat /proc/sys/kernel/random/uuid)
  case "$fs" in
    ext4) out=$("$mke2fs" -t ext4 -q -F -m 0 -L scratch -U "$uuid" -E lazy_itable_init=1,lazy_journal_init=1 "$1" 2>&1) ;;
    xfs) out=$("$mkfs_xfs" -f -q -L scratch -m uuid="$uuid" "$1" 2>&1) ;;
  esac || fail "mkfs.$fs $1: $(echo "$out" | $bb tr '\n' ' ')"
}

mnt() {
  $bb mkdir -p "$2"
  $bb mount -t "$fs" -o noatime "$1" "$2" || fail "cannot mount $1 on $2"
  $bb chmod 1777 "$2"
}

mib_of() {
  $bb stat -f -c '%b %S' "$1" | $bb awk '{printf "%d", $1 * $2 / 1048576}'
}

bind_all() {
  for b in $binds; do
    $bb mkdir -p "$1/.bind$b" "$b" && $bb mount --bind "$1/.bind$b" "$b" || fail "cannot bind $1/.bind$b onto $b"
  done
}

json_disks() {
  sep=
  k=0
  for n in $disks; do
    ser=$(attr "/sys/block/$n" serial | $bb tr -cd 'A-Za-z0-9._ -')
    b=$(($($bb cat "/sys/block/$n/size") * 512))
    extra=
    [ "$layout" = separate ] && extra=",\"mount\":\"$mount/$k\",\"uuid\":\"$($bb cat "/run/imgd/uuid.$k")\""
    printf '%s{"name":"%s","serial":"%s","bytes":%s%s}' "$sep" "$n" "$ser" "$b" "$extra"
    sep=,
    k=$((k + 1))
  done
}

report() { # layout device uuid mib
  up=$($bb cut -d ' ' -f 1 /proc/uptime)
  printf '{"mount":"%s","layout":"%s","filesystem":"%s","device":"%s","uuid":"%s","mib":%s,"disks":[%s],"ready_seconds":%s}\n' \
    "$mount" "$1" "$fs" "$2" "$3" "$4" "$(json_disks)" "$up" > /run/imgd/scratch.json
  word=disks
  [ "$count" = 1 ] && word=disk
  echo "imgd: scratch $mount $1 $count $word $4 MiB"
}

if [ "$count" = 0 ]; then
  case "$none" in
    fail) fail "no disk matched [scratch] (serial '$serial_glob', model '$model_glob', min $min_bytes bytes)" ;;
    skip) echo "imgd: scratch $mount skipped: no disk matched" ;;
    tmpfs)
      $bb mkdir -p "$mount"
      $bb mount -t tmpfs -o mode=1777 scratch "$mount" || fail "cannot mount a tmpfs on $mount"
      bind_all "$mount"
      fs=tmpfs
      report tmpfs tmpfs "" "$(mib_of "$mount")" ;;
  esac
else
  for n in $disks; do wipe "$n"; done
  if [ "$layout" = separate ]; then
    k=0
    for n in $disks; do
      mkfs "/dev/$n"
      echo "$uuid" > "/run/imgd/uuid.$k"
      mnt "/dev/$n" "$mount/$k"
      k=$((k + 1))
    done
    $bb chmod 0755 "$mount"
    bind_all "$mount/0"
    total=0
    k=0
    while [ $k -lt "$count" ]; do total=$((total + $(mib_of "$mount/$k"))); k=$((k + 1)); done
    report separate "" "" "$total"
  else
    dev=/dev/$disks
    if [ "$count" -gt 1 ]; then
      md=127
      while [ -e "/sys/block/md$md" ]; do md=$((md - 1)); done
      dev=/dev/md$md
      # Disks of different sizes make a multi-zone RAID-0, which the kernel
      # assembles only with a layout chosen (2: the one every kernel since
      # 5.4 reads the same way).
      echo 2 > /sys/module/raid0/parameters/default_layout 2>/dev/null
      out=$("$mdadm" --build "$dev" --level=0 --chunk=512 --raid-devices="$count" $(for n in $disks; do echo "/dev/$n"; done) 2>&1) ||
        fail "mdadm --build $dev: $(echo "$out" | $bb tr '\n' ' ')"
    fi
    mkfs "$dev"
    mnt "$dev" "$mount"
    bind_all "$mount"
    report "$layout" "$dev" "$uuid" "$(mib_of "$mount")"
  fi
fi
exec "$next"
