#!/usr/bin/env bash
# Benchmarks, printed side by side from one run (not timed tests: machines are noisy).
#   scripts/bench.sh build   cold and cached `imgd build hello` vs the plain shell
#                            pipeline making the same artifacts from the same .debs
#   scripts/bench.sh boot    time from command to marker for hello (kernel+initrd,
#                            real iPXE netboot, UEFI disk) via imgd test vs the same
#                            boot by hand (qemu command line, python http.server)
#   scripts/bench.sh serve   imgd serve vs nginx (sendfile on) on the same files, with
#                            wrk: 64 MiB to 64 connections, /ipxe renders vs a small
#                            static file (and each server's CPU per request; then
#                            again with each server on core 0 and wrk on core 1),
#                            1000 connections downloading a 16 MiB initrd
#   scripts/bench.sh storm   a boot storm: 10,000 simulated iPXE machines (own MAC and
#                            127.0.0.0/8 source address each) arriving within 60 s,
#                            /boot.ipxe -> /ipxe -> kernel + initrd (1 MiB each) on one
#                            kept-alive connection, imgd serve vs nginx serving the same
#                            scripts and files statically (MACHINES=, WINDOW= override);
#                            then proxyDHCP (DISCOVER -> offer, REQUEST -> ack) vs
#                            dnsmasq in network namespaces, taking turns, and again
#                            with each server on core 0 and the storm on core 1
#   scripts/bench.sh sync    a 1 GiB mostly-empty raw disk to S3 on a local endpoint (moto
#                            on loopback): imgd vs `aws s3 cp` (awscli from PyPI); EBS
#                            direct blocks sent vs blocks in the disk; a re-run's bytes
#                            and mutating calls
#   scripts/bench.sh ebs     EBS direct at scale: a 4 GiB mostly-full disk (3.5 GiB random)
#                            snapshotted by imgd and by coldsnap against moto, blocks/s
#                            and peak RSS, beside coldsnap's published figures from EC2
#   scripts/bench.sh debian  the locked debian profile: cold build, rebuild after a
#                            profile change (cached base) vs mmdebstrap from the mirror
#   scripts/bench.sh compose `imgd compose test profiles/hello.compose.toml` (server + 3
#                            nodes up, 8 steps with a partition and heal, every VM
#                            stopped) vs the same four VMs started by four hand-written
#                            qemu commands (to their markers only); peak qemu RSS a node
#   scripts/bench.sh scratch three blank 1 GiB disks to a mounted RAID-0 at boot: seconds
#                            after the kernel starts with [scratch], beside a hand-written
#                            init (mdadm --create + mkfs.ext4) and where plain hello's init starts
#   scripts/bench.sh all     every mode in turn
#
# Every figure also ends up as one line a script can compare between commits:
#   figure <mode>.<name> <imgd> <anchor> <unit> <ratio>
# (anchor and ratio are "-" where there is no other tool to compare with).
#
# QUICK=1 runs each mode once with small sizes and short runs (a minute or so
# each): CI uses it to show that every mode still runs and prints its figures.
# RUNS=N, SECS=N override the number of runs and wrk's duration; CONNS="1000 5000"
# the connection counts of the serve memory figure.
# IMGD_BIN=path uses that imgd instead of building target/release/imgd; STORM_BIN=path
# the storm load generator (scripts/storm.rs, `cargo build --example storm`);
# STORM_PARTS=dhcp (or http) runs one half of the storm; DHCP_ROUNDS=N its
# proxyDHCP rounds; AWAKE=1 keeps every core busy (idle class) through them.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
what="${1:-build}"
exec 3>&2 # the terminal's stderr, for failures inside steps whose output is hidden
quick="${QUICK:-0}"
if [ "$quick" = 1 ]; then runs="${RUNS:-1}"; else runs="${RUNS:-3}"; fi
cache="${IMGD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgd}"
debs="$cache/debs"

# A failed step names itself: no silent exit 2 from deep inside a pipeline.
what_now=$what # the mode running now (`all` runs each in turn)
trap 'echo "bench.sh $what_now: line $LINENO failed (exit $?): $BASH_COMMAND" >&3' ERR

# need PROGRAM HINT: stops with a message when a tool is missing.
need() {
  command -v "$1" >/dev/null || { echo "bench.sh $what_now: $1 is missing ($2; scripts/setup.sh installs it)" >&2; exit 2; }
}
# One deb of the cache, for amd64 (setup also fetches arm64 ones).
deb() {
  local found=("$debs"/$1_*_amd64.deb)
  [ -f "${found[0]}" ] || { echo "bench.sh $what_now: no $1 amd64 .deb in $debs (run scripts/setup.sh)" >&2; exit 2; }
  echo "${found[0]}"
}

if [ -n "${IMGD_BIN:-}" ]; then
  imgd="$IMGD_BIN"
else
  cargo build --release -q
  imgd="$PWD/target/release/imgd"
fi
[ -x "$imgd" ] || { echo "bench.sh: no imgd at $imgd" >&2; exit 2; }
tmp=$(mktemp -d)
# Servers started in the background, stopped however the script ends (nginx's
# workers outlive a master that is killed rather than told to stop).
servers=()
stop_servers() {
  [ "${#servers[@]}" -gt 0 ] || return 0
  kill -TERM "${servers[@]}" 2>/dev/null || true
  wait "${servers[@]}" 2>/dev/null || true
  servers=()
}
# Network namespaces made by a mode (storm's DHCP phase), removed however it ends.
namespaces=()
drop_namespaces() {
  local n
  for n in "${namespaces[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  namespaces=()
}
# Busy loops of the idle scheduling class (AWAKE=1), stopped however it ends.
spinners=()
stop_spinners() {
  [ "${#spinners[@]}" -gt 0 ] || return 0
  kill "${spinners[@]}" 2>/dev/null || true
  wait "${spinners[@]}" 2>/dev/null || true
  spinners=()
}
trap 'stop_servers; stop_spinners; drop_namespaces; rm -rf "$tmp"' EXIT
# Killed or interrupted, it still cleans up (bash runs EXIT traps only when it
# exits itself: a TERM left the storm's network namespaces behind).
trap 'exit 143' TERM
trap 'exit 130' INT

# figure NAME IMGD ANCHOR UNIT RATIO: the machine-readable line of one figure.
figure() { printf 'figure %s.%s %s %s %s %s\n' "$what_now" "$1" "$2" "$3" "$4" "$5"; }

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# cpu_ticks PID...: user + system CPU the processes used so far, in clock ticks.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
# free_port: a TCP port on loopback nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_nginx NAME PORT ROOT CONNECTIONS [WORKERS [CPU]]: nginx (sendfile on,
# no access log) serving ROOT on loopback PORT with WORKERS worker processes
# (one per core unless given), all on core CPU if given; config and pid under
# $tmp/NAME.*, stopped with the other servers.
start_nginx() {
  cat > "$tmp/$1.conf" <<NGX
worker_processes ${5:-auto};
user root;
daemon off;
pid $tmp/$1.pid;
error_log $tmp/$1.err;
events { worker_connections $4; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; root $3; }
}
NGX
  if [ -n "${6:-}" ]; then taskset -c "$6" nginx -c "$tmp/$1.conf" & else nginx -c "$tmp/$1.conf" & fi
  servers+=($!)
}

# The artifacts of profiles/hello.toml, made the way a shell script would:
# dpkg-deb, depmod, find | cpio | zstd, mkfs.ext4 -d, mtools, sfdisk, dd,
# qemu-img convert, tar. Same inputs, same formats, same compression level.
shell_pipeline() {
  local w=$1
  rm -rf "$w"; mkdir -p "$w/root" "$w/kern" "$w/ird/bin" "$w/out"
  dpkg-deb -x "$(deb busybox-static)" "$w/root"
  dpkg-deb -x "$(deb 'linux-image-[0-9]*')" "$w/kern"
  local ver; ver=$(basename "$w"/kern/lib/modules/*)
  depmod -b "$w/kern" "$ver"
  # The hardware's modules and their dependencies, into root and initramfs.
  local mods; mods=$(modprobe -d "$w/kern" -S "$ver" --show-depends -a virtio_pci virtio_blk virtio_net ext4 crc32c_generic \
    | awk '/^insmod/ {print $2}' | sed "s|^$w/kern/||" | awk '!seen[$0]++')
  for dest in root ird; do
    for m in $mods; do install -D -m 0644 "$w/kern/$m" "$w/$dest/$m"; done
    cp "$w/kern/lib/modules/$ver"/modules.{order,builtin,builtin.modinfo} "$w/$dest/lib/modules/$ver/"
    depmod -b "$w/$dest" "$ver"
  done
  mkdir -p "$w/root"/{proc,sys,dev,run,tmp,sbin,etc}
  printf '#!/bin/busybox sh\necho IMGD-HELLO-READY\nexec sh\n' > "$w/root/sbin/init"; chmod 755 "$w/root/sbin/init"
  echo hello > "$w/root/etc/hostname"; ln -sf /sbin/init "$w/root/init"
  # ipxe
  cp "$w/kern/boot/vmlinuz-$ver" "$w/out/vmlinuz"
  (cd "$w/root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | zstd -q -3 -T0 > "$w/out/initrd")
  # disk initramfs
  cp "$w/root/bin/busybox" "$w/ird/bin/"; ln -s busybox "$w/ird/bin/sh"
  printf '#!/bin/sh\nexec switch_root /newroot /sbin/init\n' > "$w/ird/init"; chmod 755 "$w/ird/init"
  (cd "$w/ird" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | zstd -q -3 -T0 > "$w/disk-initrd")
  # ESP
  truncate -s 64M "$w/esp.img"; mformat -i "$w/esp.img" -F -N 12345678 -v ESP ::
  mmd -i "$w/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
  mcopy -i "$w/esp.img" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
  printf 'timeout 0\ndefault imgd.conf\n' > "$w/loader.conf"; mcopy -i "$w/esp.img" "$w/loader.conf" ::/loader/loader.conf
  printf 'linux /vmlinuz\ninitrd /initrd\noptions root=LABEL=root\n' > "$w/e.conf"; mcopy -i "$w/esp.img" "$w/e.conf" ::/loader/entries/imgd.conf
  mcopy -i "$w/esp.img" "$w/out/vmlinuz" ::/vmlinuz; mcopy -i "$w/esp.img" "$w/disk-initrd" ::/initrd
  # ext4 root, GPT, raw
  local root_mib=198
  truncate -s ${root_mib}M "$w/root.ext4"; mkfs.ext4 -q -F -L root -d "$w/root" "$w/root.ext4"
  truncate -s $((root_mib + 64 + 2))M "$w/out/disk.raw"
  printf 'label: gpt\nstart=2048, size=64M, type=uefi\nsize=%sM, type=linux\n' "$root_mib" | sfdisk -q "$w/out/disk.raw"
  dd if="$w/esp.img" of="$w/out/disk.raw" bs=1M seek=1 conv=sparse,notrunc status=none
  dd if="$w/root.ext4" of="$w/out/disk.raw" bs=1M seek=65 conv=sparse,notrunc status=none
  qemu-img convert -f raw -O qcow2 -o compat=1.1 "$w/out/disk.raw" "$w/out/disk.qcow2"
  qemu-img convert -f raw -O vpc -o subformat=fixed,force_size "$w/out/disk.raw" "$w/out/disk.vhd"
  tar -C "$w/root" --sort=name --owner=0 --group=0 --numeric-owner -cf - . | zstd -q -3 -T0 > "$w/out/rootfs.tar.zst"
  (cd "$w/out" && b3sum -- * > B3SUMS) # imgd's manifest digest is BLAKE3: same work
}

bench_build() {
  need mformat "apt-get install mtools"; need sfdisk "apt-get install fdisk"; need cpio "apt-get install cpio"
  need zstd "apt-get install zstd"; need modprobe "apt-get install kmod"; need b3sum "apt-get install b3sum"
  local cold=() hit=() again=() sh=()
  # Cold is cold: a cache folder of its own (the deb cache linked in) with no
  # unpacked kernel. "Changed" is the next build of a changed profile: a new
  # store entry, the kernel package already unpacked in the cache.
  local kc="$tmp/kcache"
  for i in $(seq "$runs"); do
    rm -rf "$tmp/store" "$kc"; mkdir -p "$kc"; ln -s "$cache/debs" "$kc/debs"
    t0=$(now); IMGD_CACHE="$kc" IMGD_STORE="$tmp/store" "$imgd" build hello >/dev/null 2>&1; t1=$(now)
    cold+=("$(calc "$t1 - $t0")")
    t0=$(now); IMGD_CACHE="$kc" IMGD_STORE="$tmp/store" "$imgd" build hello >/dev/null 2>&1; t1=$(now)
    hit+=("$(calc "$t1 - $t0")")
    t0=$(now); IMGD_CACHE="$kc" IMGD_STORE="$tmp/store" "$imgd" build hello --set "hostname=run-$i" >/dev/null 2>&1; t1=$(now)
    again+=("$(calc "$t1 - $t0")")
    t0=$(now); shell_pipeline "$tmp/sh" >/dev/null 2>&1; t1=$(now)
    sh+=("$(calc "$t1 - $t0")")
  done
  local c h a s
  c=$(printf '%s\n' "${cold[@]}" | median); h=$(printf '%s\n' "${hit[@]}" | median)
  a=$(printf '%s\n' "${again[@]}" | median); s=$(printf '%s\n' "${sh[@]}" | median)
  echo "build hello (every format), median of $runs runs:"
  printf '  %-44s %8.3f s\n' "imgd build, cold (kernel .deb unpacked)" "$c"
  printf '  %-44s %8.3f s   (goal < 0.100 s)\n' "imgd build, cache hit" "$h"
  printf '  %-44s %8.3f s\n' "imgd build, changed profile (kernel kept)" "$a"
  printf '  %-44s %8.3f s\n' "shell pipeline (cpio|zstd, mkfs.ext4 -d, ...)" "$s"
  printf '  %-44s %8.2fx  (goal >= 1.0: imgd no slower)\n' "shell time / imgd cold time" "$(calc "$s / $c")"
  printf '  %-44s %8.2fx  (the script unpacks the kernel every time)\n' "shell time / imgd changed-profile time" "$(calc "$s / $a")"
  figure cold "$c" "$s" s "$(calc "$s / $c")"
  figure cache_hit "$h" - s -
  figure changed "$a" "$s" s "$(calc "$s / $a")"
}

# Starts a command in the background and prints the seconds until MARKER
# appears in its output; then kills it.
until_marker() {
  local log=$1; shift
  local t0 t1 pid
  t0=$(now)
  setpriv --pdeathsig KILL -- "$@" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 6000); do
    grep -q IMGD-HELLO-READY "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  t1=$(now)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  grep -q IMGD-HELLO-READY "$log" || { echo "hand boot failed, see $log" >&2; tail -5 "$log" >&2; return 1; }
  calc "$t1 - $t0"
}

bench_boot() {
  need qemu-system-x86_64 "apt-get install qemu-system-x86"; need python3 "apt-get install python3"
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || { echo "bench.sh boot: no OVMF (apt-get install ovmf)" >&2; exit 2; }
  export IMGD_STORE="$tmp/store"
  "$imgd" build hello >/dev/null 2>&1
  local entry; entry=$("$imgd" build hello --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
  local cmdline; cmdline=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["recipe"]["cmdline"])' "$entry/manifest.json")
  local q=(qemu-system-x86_64 -machine q35 -cpu max -m 1024 -smp 1 -accel tcg -display none -monitor none -serial stdio -no-reboot)
  local ovmf=(-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive "if=pflash,format=raw,unit=1,file=$tmp/vars.fd")
  # A plain static server with the three files, the way people serve netboot.ipxe.
  mkdir -p "$tmp/www"; cp "$entry"/{vmlinuz,initrd,boot.ipxe} "$tmp/www/"
  local port; port=$(free_port)
  (cd "$tmp/www" && setpriv --pdeathsig KILL -- python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
  local www=$!
  sleep 0.5
  local net="user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:$imgd relay 127.0.0.1:$port,bootfile=http://10.0.2.100/boot.ipxe"
  local rows=() figs=()
  # QUICK (the test suite's run) boots the kernel only: the quick form shows
  # the benchmark works, the other branches are the same code, and the suite
  # netboots and disk-boots hello elsewhere (tests/boot.rs); each TCG boot is
  # CPU the whole suite waits for.
  local kinds="kernel netboot disk"
  if [ "$quick" = 1 ]; then kinds="kernel"; fi
  for kind in $kinds; do
    local a=() b=()
    for i in $(seq "$runs"); do
      cp /usr/share/OVMF/OVMF_VARS_4M.fd "$tmp/vars.fd"
      case $kind in
        kernel)
          t0=$(now); "$imgd" test hello --format kernel --accel tcg >/dev/null 2>&1; t1=$(now)
          a+=("$(calc "$t1 - $t0")")
          b+=("$(until_marker "$tmp/k.log" "${q[@]}" -nic none -kernel "$entry/vmlinuz" -initrd "$entry/initrd" -append "rdinit=/init $cmdline")") ;;
        netboot)
          t0=$(now); "$imgd" test hello --format ipxe --platform pcbios --accel tcg >/dev/null 2>&1; t1=$(now)
          a+=("$(calc "$t1 - $t0")")
          b+=("$(until_marker "$tmp/n.log" "${q[@]}" -netdev "$net" -device virtio-net-pci,netdev=n0,bootindex=1)") ;;
        disk)
          t0=$(now); "$imgd" test hello --format raw --accel tcg >/dev/null 2>&1; t1=$(now)
          a+=("$(calc "$t1 - $t0")")
          b+=("$(until_marker "$tmp/d.log" "${q[@]}" -nic none "${ovmf[@]}" -drive "file=$entry/disk.raw,format=raw,if=none,id=d0,snapshot=on" -device virtio-blk-pci,drive=d0,bootindex=1)") ;;
      esac
    done
    local ma mb
    ma=$(printf '%s\n' "${a[@]}" | median); mb=$(printf '%s\n' "${b[@]}" | median)
    rows+=("$(printf '  %-34s %8.2f s %8.2f s %8.2fx' "$kind" "$ma" "$mb" "$(calc "$ma / $mb")")")
    figs+=("$kind $ma $mb s $(calc "$ma / $mb")")
  done
  kill "$www" 2>/dev/null || true
  echo "boot hello to its marker under TCG, median of $runs runs:"
  printf '  %-34s %10s %10s %9s\n' "" "imgd test" "by hand" "ratio"
  printf '%s\n' "${rows[@]}"
  echo "  (ratio = imgd / by hand; goal: ~1.0, imgd adds no measurable time)"
  local f
  for f in "${figs[@]}"; do
    # shellcheck disable=SC2086
    figure $f
  done
}

# wrk's summary as "requests/s bytes/s p99_ms errors", from wrk's output
# once it has ended: python starting beside a running wrk took tens of ms of
# CPU from it or the server, and raised the p99 of a 5 s render run from
# 0.7 to 1.6 ms (session 25).
wrk_summary() {
  python3 -c '
import re, sys
t = sys.stdin.read()
def num(pat, default="0"):
    m = re.search(pat, t)
    return m.group(1) if m else default
def size(v):
    m = re.match(r"([\d.]+)([KMG]?B)", v)
    return float(m.group(1)) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)] if m else 0.0
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)] if m else 0.0
rps = float(num(r"Requests/sec:\s+([\d.]+)"))
bps = size(num(r"Transfer/sec:\s+(\S+)", "0B"))
p99 = ms(num(r"\s99%\s+(\S+)", "0ms"))
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t)) + int(num(r"Non-2xx or 3xx responses: (\d+)"))
print(f"{rps:.0f} {bps:.0f} {p99:.3f} {errs}")
'
}

# render_rounds LABEL SUFFIX WRK... -- IMGD_URL IMGD_PIDS NGINX_URL NGINX_PIDS:
# $runs turns of /ipxe renders from imgd and nginx's static small file, each
# driven by the command WRK for $secs s over 64 connections; prints and
# records (figure names ipxe_*SUFFIX) the medians of requests per second,
# p99 and the servers' CPU per request. CPU is read from /proc around each
# run: on a machine whose speed moves between runs it ranks them more
# steadily than requests per second (session 21: nginx gave 156k and 225k
# req/s in back-to-back runs; CPU per request moved a tenth).
render_rounds() {
  local label=$1 suffix=$2 load=()
  shift 2
  while [ "$1" != -- ]; do load+=("$1"); shift; done
  local iurl=$2 ipids=$3 nurl=$4 npids=$5
  local ir=() nr=() ip=() np=() ic=() nc=() irps nrps ip99 np99 t0 hz a b e i ierr=0 nerr=0
  hz=$(getconf CLK_TCK)
  for i in $(seq "$runs"); do
    # shellcheck disable=SC2086 # one PID per word
    t0=$(cpu_ticks $ipids)
    a=$("${load[@]}" -c64 -d"${secs}s" --latency "$iurl/ipxe?mac=52-54-00-12-34-56&platform=efi" 2>&1)
    a=$(wrk_summary <<<"$a")
    # shellcheck disable=SC2086
    ic+=("$(calc "($(cpu_ticks $ipids) - $t0) / $hz * 1e6 / ($(echo "$a" | cut -d' ' -f1) * $secs + 1e-9)")")
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $npids)
    b=$("${load[@]}" -c64 -d"${secs}s" --latency "$nurl/small.txt" 2>&1)
    b=$(wrk_summary <<<"$b")
    # shellcheck disable=SC2086
    nc+=("$(calc "($(cpu_ticks $npids) - $t0) / $hz * 1e6 / ($(echo "$b" | cut -d' ' -f1) * $secs + 1e-9)")")
    read -r irps _ ip99 e <<<"$a"; ir+=("$irps"); ip+=("$ip99"); ierr=$((ierr + e))
    read -r nrps _ np99 e <<<"$b"; nr+=("$nrps"); np+=("$np99"); nerr=$((nerr + e))
  done
  irps=$(printf '%s\n' "${ir[@]}" | median); nrps=$(printf '%s\n' "${nr[@]}" | median)
  ip99=$(printf '%s\n' "${ip[@]}" | median); np99=$(printf '%s\n' "${np[@]}" | median)
  [ -z "$label" ] || echo "  $label"
  echo "  (renders, req/s per run: imgd $(printf '%.0f ' "${ir[@]}")/ nginx $(printf '%.0f ' "${nr[@]}"); p99 ms per run: imgd $(printf '%s ' "${ip[@]}")/ nginx $(printf '%s ' "${np[@]}"))"
  printf '  %-46s imgd %8.0f req/s  nginx %8.0f req/s  ratio %.2fx  (goal >= 1.0)\n' "/ipxe render vs static small file, median of $runs" "$irps" "$nrps" "$(calc "$irps / $nrps")"
  printf '  %-46s imgd %8.2f ms     nginx %8.2f ms     ratio %.2fx  (nginx / imgd; goal >= 1.0 and < 5 ms; errors %s/%s)\n' \
    "  p99 latency, median of $runs" "$ip99" "$np99" "$(calc "$np99 / $ip99")" "$ierr" "$nerr"
  local icpu ncpu
  icpu=$(printf '%s\n' "${ic[@]}" | median); ncpu=$(printf '%s\n' "${nc[@]}" | median)
  printf '  %-46s imgd %8.2f us     nginx %8.2f us     ratio %.2fx  (nginx / imgd; per run: imgd %s/ nginx %s)\n' \
    "  server CPU per request, median of $runs" "$icpu" "$ncpu" "$(calc "$ncpu / $icpu")" \
    "$(printf '%.1f ' "${ic[@]}")" "$(printf '%.1f ' "${nc[@]}")"
  figure "ipxe_render$suffix" "$irps" "$nrps" req/s "$(calc "$irps / $nrps")"
  figure "ipxe_p99$suffix" "$ip99" "$np99" ms "$(calc "$np99 / $ip99")"
  figure "ipxe_cpu_us$suffix" "$icpu" "$ncpu" us "$(calc "$ncpu / $icpu")"
  [ "$ierr" = 0 ] || { echo "bench.sh serve: imgd had $ierr errors rendering" >&2; exit 1; }
}

# render_on_own_cores DIR: the renders again with wrk off the servers' core.
# Above, wrk's two threads share the two cores with the servers', and p99
# measures the scheduler more than the server: the same imgd gave 1.8, 2.5
# and 3.8 ms in back-to-back runs, nginx 2.5-3.6 (session 25). Here each
# server has core 0 (imgd with one HTTP thread, nginx with one worker) and
# wrk's one thread core 1, as clients on other machines would be.
render_on_own_cores() {
  [ "$(nproc)" -ge 2 ] || { echo "  (renders on own cores: skipped, it needs 2 cores)"; return 0; }
  local port_i port_n srv
  port_i=$(free_port); port_n=$(free_port)
  start_nginx nginx1 "$port_n" "$1" 8192 1 0
  IMGD_STORE="$tmp/store" setpriv --pdeathsig KILL -- taskset -c 0 "$imgd" serve --listen "127.0.0.1:$port_i" --config "$tmp/machines.toml" \
    --max-connections 20000 --http-threads 1 2>>"$tmp/serve.log" &
  srv=$!
  servers+=("$srv")
  sleep 1
  render_rounds "the same, each server on core 0 (one thread or worker), wrk -t1 on core 1:" _own_cores taskset -c 1 wrk -t1 -- \
    "http://127.0.0.1:$port_i" "$srv" "http://127.0.0.1:$port_n" "$(pgrep -P "$(cat "$tmp/nginx1.pid")" | tr '\n' ' ')"
}

bench_serve() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  need nginx "apt-get install nginx-light"; need wrk "apt-get install wrk"
  local secs big=64 conns_list
  if [ "$quick" = 1 ]; then secs="${SECS:-2}"; big=8; conns_list="${CONNS:-200}"; else secs="${SECS:-10}"; conns_list="${CONNS:-1000 5000}"; fi
  # One store entry with the files both servers serve.
  local hash; hash=$(printf 'bench' | sha256sum | cut -c1-64)
  local entry="${hash:0:32}-bench" dir="$tmp/store/${hash:0:32}-bench"
  mkdir -p "$dir"
  head -c $((big << 20)) /dev/urandom > "$dir/big.bin"
  head -c $((16 << 20)) /dev/urandom > "$dir/initrd"
  head -c 300 /dev/urandom | base64 > "$dir/small.txt"
  cp "$dir/big.bin" "$dir/vmlinuz"
  python3 - "$dir" "$entry" "$hash" <<'PY'
import json, os, subprocess, sys
d, entry, h = sys.argv[1:4]
arts = []
for f, name, fmt in [("vmlinuz", "kernel", "ipxe"), ("initrd", "initrd", "ipxe"), ("big.bin", "disk", "raw"), ("small.txt", "rootfs", "tar")]:
    p = os.path.join(d, f)
    arts.append({"name": name, "format": fmt, "file": f, "size": os.path.getsize(p), "blake3": subprocess.check_output(["b3sum", "--no-names", p], text=True).strip()})
m = {"name": entry, "hash": h, "profile": "bench", "hardware": "qemu-x86_64", "arch": "x86_64", "firmware": "uefi",
     "imgd_version": "bench", "built_at": 0, "source_date_epoch": 0, "artifacts": arts, "recipe": {"cmdline": "console=ttyS0"}}
json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
PY
  printf '[[group]]\nname = "all"\nentry = "%s"\ndefault = true\ndownloads = ["disk", "rootfs"]\n' "$entry" > "$tmp/machines.toml"
  local port_i port_n
  port_i=$(free_port)
  port_n=$(free_port)
  start_nginx nginx "$port_n" "$dir" 8192
  IMGD_STORE="$tmp/store" setpriv --pdeathsig KILL -- "$imgd" serve --listen "127.0.0.1:$port_i" --config "$tmp/machines.toml" --max-connections 20000 ${CACHE_MIB:+--cache-mib "$CACHE_MIB"} 2>"$tmp/serve.log" &
  local srv=$!
  servers+=("$srv")
  sleep 1
  local I="http://127.0.0.1:$port_i" N="http://127.0.0.1:$port_n"
  run() { local out; out=$(wrk -t2 "$@" 2>&1); wrk_summary <<<"$out"; }
  echo "imgd serve vs nginx (sendfile on), wrk -t2, ${secs}s each, same files:"
  local a b i ia=() na=() ierr=0 nerr=0 e
  # The big-file figure is noisy on a 2-core machine (wrk shares the cores):
  # imgd and nginx take turns, $runs runs each, and the medians are compared.
  for i in $(seq "$runs"); do
    a=$(run -c64 -d"${secs}s" --timeout 30s "$I/artifacts/$entry/big.bin"); b=$(run -c64 -d"${secs}s" --timeout 30s "$N/big.bin")
    read -r _ ibps _ e <<<"$a"; ia+=("$ibps"); ierr=$((ierr + e))
    read -r _ nbps _ e <<<"$b"; na+=("$nbps"); nerr=$((nerr + e))
  done
  ibps=$(printf '%s\n' "${ia[@]}" | median); nbps=$(printf '%s\n' "${na[@]}" | median)
  echo "  (64 connections, MB/s per run: imgd $(printf '%s ' "${ia[@]}" | awk '{for (i=1;i<=NF;i++) printf "%.0f ", $i/1e6}')/ nginx $(printf '%s ' "${na[@]}" | awk '{for (i=1;i<=NF;i++) printf "%.0f ", $i/1e6}'))"
  printf '  %-46s imgd %8.0f MB/s  nginx %8.0f MB/s  ratio %.2fx  (goal >= 1.0; errors %s/%s)\n' \
    "$big MiB artifact, 64 connections, median of $runs" "$(calc "$ibps / 1e6")" "$(calc "$nbps / 1e6")" "$(calc "$ibps / $nbps")" "$ierr" "$nerr"
  figure artifact_64c "$(calc "$ibps / 1e6")" "$(calc "$nbps / 1e6")" MB/s "$(calc "$ibps / $nbps")"
  [ "$ierr" = 0 ] || { echo "bench.sh serve: imgd had $ierr errors; its log:" >&2; tail -5 "$tmp/serve.log" >&2; exit 1; }
  # Renders vs a static file, taking turns too: one 10 s run of each moved
  # the ratio between 0.81 and 1.07 from day to day (session 8).
  render_rounds "" "" wrk -t2 -- "$I" "$srv" "$N" "$(pgrep -P "$(cat "$tmp/nginx.pid")" | tr '\n' ' ')"
  render_on_own_cores "$dir"
  local conns rss
  for conns in $conns_list; do
    # Each figure is the peak of its own run: writing 5 to clear_refs resets
    # the process's high-water mark (VmHWM) to what it holds now.
    echo 5 > "/proc/$srv/clear_refs"
    a=$(run -c"$conns" -d"${secs}s" --timeout 30s "$I/artifacts/$entry/initrd")
    read -r irps ibps _ ierr <<<"$a"
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
    printf '  %-46s %8.0f MB/s, %s errors, peak RSS %s MiB  (goal: 0 errors; <= 64 MiB at 1000)\n' \
      "$conns connections x 16 MiB initrd" "$(calc "$ibps / 1e6")" "$ierr" "$(calc "$rss / 1024")"
    figure "peak_rss_${conns}c" "$(calc "$rss / 1024")" - MiB -
    figure "errors_${conns}c" "$ierr" - count -
  done
  # A storm on a disk four times the budget: which chunks stay cached decides
  # how often each is read and hashed again. A fresh server, so its peak is
  # this run's own.
  conns=${conns_list%% *}
  kill "$srv"; wait "$srv" 2>/dev/null || true
  IMGD_STORE="$tmp/store" setpriv --pdeathsig KILL -- "$imgd" serve --listen "127.0.0.1:$port_i" --config "$tmp/machines.toml" --max-connections 20000 ${CACHE_MIB:+--cache-mib "$CACHE_MIB"} 2>>"$tmp/serve.log" &
  srv=$!
  servers+=("$srv")
  sleep 1
  a=$(run -c"$conns" -d"${secs}s" --timeout 30s "$I/artifacts/$entry/big.bin"); b=$(run -c"$conns" -d"${secs}s" --timeout 30s "$N/big.bin")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
  read -r _ ibps _ ierr <<<"$a"; read -r _ nbps _ nerr <<<"$b"
  printf '  %-46s imgd %8.0f MB/s  nginx %8.0f MB/s  ratio %.2fx  (errors %s/%s; imgd peak RSS %s MiB)\n' \
    "$conns connections x $big MiB artifact" "$(calc "$ibps / 1e6")" "$(calc "$nbps / 1e6")" "$(calc "$ibps / $nbps")" "$ierr" "$nerr" "$(calc "$rss / 1024")"
  figure "artifact_${conns}c" "$(calc "$ibps / 1e6")" "$(calc "$nbps / 1e6")" MB/s "$(calc "$ibps / $nbps")"
  figure "artifact_peak_rss_${conns}c" "$(calc "$rss / 1024")" - MiB -
  stop_servers
}

bench_storm() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  need nginx "apt-get install nginx-light"; need curl "apt-get install curl"
  # Two rounds: the machines spread over a minute, then all of them within
  # 10 s (a rack power-cycled after an outage). QUICK: one short round.
  local machines windows
  if [ "$quick" = 1 ]; then machines="${MACHINES:-300}"; windows="${WINDOW:-3}"; else machines="${MACHINES:-10000}"; windows="${WINDOW:-60 10}"; fi
  local storm="${STORM_BIN:-}" parts="${STORM_PARTS:-http dhcp}"
  if [ -z "$storm" ]; then cargo build --release -q --example storm; storm="$PWD/target/release/examples/storm"; fi
  # A store entry with a 1 MiB kernel and initrd: the storm measures the
  # server's answers and its memory, not loopback's copy bandwidth.
  local hash; hash=$(printf 'storm' | sha256sum | cut -c1-64)
  local entry="${hash:0:32}-storm" dir="$tmp/storm-store/${hash:0:32}-storm"
  mkdir -p "$dir"
  head -c $((1 << 20)) /dev/urandom > "$dir/vmlinuz"
  head -c $((1 << 20)) /dev/urandom > "$dir/initrd"
  python3 - "$dir" "$entry" "$hash" <<'PY'
import json, os, subprocess, sys
d, entry, h = sys.argv[1:4]
arts = []
for f, name in [("vmlinuz", "kernel"), ("initrd", "initrd")]:
    p = os.path.join(d, f)
    arts.append({"name": name, "format": "ipxe", "file": f, "size": os.path.getsize(p), "blake3": subprocess.check_output(["b3sum", "--no-names", p], text=True).strip()})
m = {"name": entry, "hash": h, "profile": "storm", "hardware": "qemu-x86_64", "arch": "x86_64", "firmware": "uefi",
     "imgd_version": "bench", "built_at": 0, "source_date_epoch": 0, "artifacts": arts, "recipe": {"cmdline": "console=ttyS0"}}
json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
PY
  # A fleet's machines file: 200 racks by source network (127.1.N.0/24 is
  # not how the storm's addresses fall, so every machine is matched against
  # all of them), then the default group that boots them.
  : > "$tmp/storm-machines.toml"
  local r
  for r in $(seq 1 200); do
    printf '[[group]]
name = "rack-%s"
entry = "%s"
selector = { source = ["127.%s.0.0/16"] }
' "$r" "$entry" "$((r + 1))" >> "$tmp/storm-machines.toml"
  done
  printf '[[group]]
name = "fleet"
entry = "%s"
default = true
' "$entry" >> "$tmp/storm-machines.toml"
  local window sfx first=1
  for window in $windows; do
    # Figures of the rounds after the first carry the window: `errors_10s`.
    sfx=""; [ "$first" = 1 ] || sfx="_${window}s"
    case " $parts " in *" http "*) storm_round ;; esac
    case " $parts " in *" dhcp "*) storm_dhcp "$machines" "$window" "$storm" "$entry" ;; esac
    first=0
  done
}

# One round of the HTTP storm: imgd, then nginx with the same files, each
# asked by $machines machines within $window seconds (bench_storm's locals).
storm_round() {
  local port_i port_n
  port_i=$(free_port)
  port_n=$(free_port)
  IMGD_STORE="$tmp/storm-store" setpriv --pdeathsig KILL -- "$imgd" serve --listen "127.0.0.1:$port_i" \
    --config "$tmp/storm-machines.toml" --max-connections 20000 2>"$tmp/storm-serve.log" &
  local srv=$!
  servers+=("$srv")
  local I="http://127.0.0.1:$port_i" N="http://127.0.0.1:$port_n" i
  for i in $(seq 1 50); do curl -sf "$I/healthz" >/dev/null && break; sleep 0.1; done
  # nginx's root: the scripts imgd renders, saved as files, and the entry.
  local root="$tmp/storm-nginx"
  mkdir -p "$root/artifacts"
  curl -sf "$I/boot.ipxe" > "$root/boot.ipxe"
  curl -sf "$I/ipxe?mac=52-54-00-00-00-01&platform=efi" > "$root/ipxe"
  ln -sfn "$dir" "$root/artifacts/$entry"
  start_nginx storm-nginx "$port_n" "$root" 20000
  for i in $(seq 1 50); do curl -sf "$N/boot.ipxe" >/dev/null && break; sleep 0.1; done
  echo "boot storm: $machines machines (own MAC + 127/8 address each) within ${window}s, each /boot.ipxe -> /ipxe -> kernel + initrd (1 MiB each):"
  # Peak RSS of imgd's own run: clear_refs resets its high-water mark.
  echo 5 > "/proc/$srv/clear_refs"
  local a b
  a=$("$storm" "$I" "$machines" "$window")
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
  # The status page right after the storm: every machine is a row of it.
  local t_html t_json listed rss_page
  t_html=$(for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total}\n' "$I/status"; done | median)
  t_json=$(for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total}\n' "$I/status.json"; done | median)
  listed=$(curl -s "$I/status.json" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["machines"]))')
  rss_page=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
  b=$("$storm" "$N" "$machines" "$window")
  local nrss=0 w
  for w in $(pgrep -f "nginx: worker process" || true); do
    nrss=$((nrss + $(awk '/VmHWM/ {print $2}' "/proc/$w/status" 2>/dev/null || echo 0)))
  done
  local _n irend isecs irps is50 is99 ia50 ia99 imb ierr nrend nsecs nrps ns50 ns99 na50 na99 nmb nerr
  read -r _n irend isecs irps is50 is99 ia50 ia99 imb ierr <<<"$a"
  read -r _n nrend nsecs nrps ns50 ns99 na50 na99 nmb nerr <<<"$b"
  printf '  %-34s imgd %8s      nginx %8s      (goal: 0 errors)\n' "errors" "$ierr" "$nerr"
  printf '  %-34s imgd %8s      nginx %8s\n' "renders (/ipxe answered)" "$irend" "$nrend"
  printf '  %-34s imgd %8s /s   nginx %8s /s\n' "renders per second" "$irps" "$nrps"
  printf '  %-34s imgd %8s ms   nginx %8s ms\n' "script latency p50" "$is50" "$ns50"
  printf '  %-34s imgd %8s ms   nginx %8s ms   ratio %.2fx  (goal < 50 ms)\n' "script latency p99" "$is99" "$ns99" "$(calc "$is99 / ($ns99 + 0.001)")"
  printf '  %-34s imgd %8s ms   nginx %8s ms\n' "artifact latency p50 (1 MiB)" "$ia50" "$na50"
  printf '  %-34s imgd %8s ms   nginx %8s ms\n' "artifact latency p99 (1 MiB)" "$ia99" "$na99"
  printf '  %-34s imgd %8.1f MiB  nginx %8.1f MiB (all workers)  (goal < 200 MiB)\n' "server peak RSS" "$(calc "$rss / 1024")" "$(calc "$nrss / 1024")"
  printf '  %-34s imgd %8.1f ms html, %.1f ms JSON, %s machines listed  (goal < 200 ms)\n' "status page after the storm" \
    "$(calc "$t_html * 1000")" "$(calc "$t_json * 1000")" "$listed"
  printf '  %-34s imgd %8.1f MiB (peak through the storm and the pages)\n' "server peak RSS with the pages" "$(calc "$rss_page / 1024")"
  figure "status_html_ms$sfx" "$(calc "$t_html * 1000")" - ms -
  figure "status_json_ms$sfx" "$(calc "$t_json * 1000")" - ms -
  figure "status_rows$sfx" "$listed" - count -
  figure "peak_rss_with_status$sfx" "$(calc "$rss_page / 1024")" - MiB -
  figure "errors$sfx" "$ierr" "$nerr" count -
  figure "renders_per_s$sfx" "$irps" "$nrps" req/s "$(calc "$irps / $nrps")"
  figure "script_p99$sfx" "$is99" "$ns99" ms "$(calc "$is99 / ($ns99 + 0.001)")"
  figure "artifact_p99$sfx" "$ia99" "$na99" ms "$(calc "$ia99 / ($na99 + 0.001)")"
  figure "peak_rss$sfx" "$(calc "$rss / 1024")" "$(calc "$nrss / 1024")" MiB "$(calc "$rss / ($nrss + 1)")"
  [ "$ierr" = 0 ] || { echo "bench.sh storm: imgd had $ierr errors; its log:" >&2; tail -5 "$tmp/storm-serve.log" >&2; exit 1; }
  stop_servers
}

# The DHCP side of the storm: the machines' PXE DISCOVERs and port-4011
# REQUESTs, broadcast on a veth between two network namespaces (no broadcast
# on loopback; nothing leaves them), answered by imgd serve --proxy-dhcp and
# then by dnsmasq in proxy mode (--dhcp-range=...,proxy with a pxe-service).
storm_dhcp() {
  local machines=$1 window=$2 storm=$3
  if [ "$(id -u)" != 0 ] || ! command -v dnsmasq >/dev/null; then
    echo "  (proxyDHCP storm skipped: it needs root and dnsmasq for its network namespaces)"
    return 0
  fi
  local S="imgd-storm-s-$$" C="imgd-storm-c-$$"
  ip netns add "$S"; namespaces+=("$S")
  ip netns add "$C"; namespaces+=("$C")
  ip -n "$S" link set lo up; ip -n "$C" link set lo up
  ip -n "$S" link add eth0 type veth peer name eth0 netns "$C"
  ip -n "$S" addr add 192.0.2.1/24 dev eth0; ip -n "$S" link set eth0 up
  ip -n "$C" addr add 192.0.2.50/24 dev eth0; ip -n "$C" link set eth0 up
  # AWAKE=1: every core kept busy by a loop that runs only when nothing else
  # wants the core (SCHED_IDLE), so no core of this VM halts between packets.
  # At 1,000 machines a second the cores idle most of the time, and a halted
  # virtual CPU takes long to wake: both servers' offer p99 was ~0.38 ms
  # with the cores idle and 0.04 ms with them awake (session 25).
  if [ "${AWAKE:-0}" = 1 ]; then
    local core
    for core in $(seq 0 $(($(nproc) - 1))); do
      chrt -i 0 taskset -c "$core" bash -c 'while :; do :; done' &
      spinners+=($!)
    done
    echo "  (AWAKE=1: every core kept busy by a SCHED_IDLE loop)"
  fi
  dhcp_rounds "$machines" "$window" "$storm" "$S" "$C" "" "" "${sfx:-}"
  # The same with the load generator off the server's core: at 1,000
  # machines a second the ack's p99 moved 0.37-0.51 ms for both servers with
  # the storm's threads sharing the two cores, and 0.07-0.09 ms (imgd) and
  # 0.08-0.43 (dnsmasq) with the server on core 0 and the storm on core 1
  # (session 25): what is left is the server's own time.
  if [ "$(nproc)" -ge 2 ]; then
    echo "the same, each server on core 0 and the storm on core 1:"
    dhcp_rounds "$machines" "$window" "$storm" "$S" "$C" "taskset -c 0" "taskset -c 1" "_own_cores${sfx:-}"
  fi
  stop_spinners
  drop_namespaces
  # Program pages depend on the hot functions lying together (build.rs):
  # names the binary no longer has are laid out where they fall. Counted
  # without LLVM's `.llvm.HASH` endings, which scripts/linker-wrapper.sh
  # follows from build to build.
  local hot=0 listed bare='s/\.llvm\.[0-9]+$//'
  listed=$(sed -E "$bare" scripts/hot-symbols.txt | LC_ALL=C sort -u | wc -l)
  if command -v nm >/dev/null; then
    hot=$(nm --defined-only "$imgd" | awk '{print $3}' | sed -E "$bare" | LC_ALL=C sort -u \
      | LC_ALL=C comm -12 - <(sed -E "$bare" scripts/hot-symbols.txt | LC_ALL=C sort -u) | wc -l)
  fi
  printf '  %-34s %s of the %s listed for the builds with and without AWS, plain and CI (scripts/hot-symbols.sh lists them again)\n' \
    "  hot functions laid out together" "$hot" "$listed"
  figure "dhcp_hot_functions${sfx:-}" "$hot" "$listed" count "$(calc "$hot / $listed")"
}

# dhcp_rounds MACHINES WINDOW STORM SERVER_NS CLIENT_NS SERVER_PIN STORM_PIN
# SUFFIX: the proxyDHCP storm's rounds, imgd and dnsmasq taking turns, each
# server started as SERVER_PIN (a command prefix, or "") and the storm as
# STORM_PIN; prints the medians and records figures named dhcp_*SUFFIX.
dhcp_rounds() {
  local machines=$1 window=$2 storm=$3 S=$4 C=$5 spin=$6 cpin=$7 sfx=$8
  # imgd and dnsmasq take turns, $rounds rounds each, and the medians are
  # compared: at a 10 s window the p99s are a few tenths of a ms, and one
  # run of each moved their ratio between 0.82 and 1.19 (sessions 19-24).
  # Each round's server starts afresh, so its peak is that round's own; the
  # highest peak of each is compared. At least 7 rounds (not QUICK): each
  # server's offer p99 moved 0.15-0.40 ms from round to round (session 26,
  # 9 rounds), and medians of fewer move the ratio by several hundredths.
  local rounds=${DHCP_ROUNDS:-$runs} r srv out irounds=() nrounds=() ipeaks="" npeaks="" rss=0 nrss=0 peak split nsplit now_split cpu_us icpus=() ncpus=()
  if [ "$quick" != 1 ] && [ -z "${DHCP_ROUNDS:-}" ] && [ "$rounds" -lt 7 ]; then rounds=7; fi
  if [ "$window" -gt 10 ] && [ -z "${DHCP_ROUNDS:-}" ]; then rounds=1; fi
  for r in $(seq "$rounds"); do
    # shellcheck disable=SC2086 # the prefixes are words, or nothing
    IMGD_STORE="$tmp/storm-store" ip netns exec "$S" setpriv --pdeathsig KILL -- $spin "$imgd" serve --listen 192.0.2.1:8080 \
      --config "$tmp/storm-machines.toml" --proxy-dhcp eth0 2>"$tmp/storm-dhcp.log" &
    srv=$!
    servers+=("$srv")
    local i
    for i in $(seq 1 50); do grep -q "listening on" "$tmp/storm-dhcp.log" 2>/dev/null && break; sleep 0.1; done
    echo 5 > "/proc/$srv/clear_refs"
    dhcp_measure "$srv"
    irounds+=("$out"); ipeaks+="$(mib "$peak") "; split=$now_split; icpus+=("$cpu_us")
    [ "$peak" -le "$rss" ] || rss=$peak
    # shellcheck disable=SC2086
    ip netns exec "$S" $spin dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --interface=eth0 --bind-interfaces \
      --dhcp-range=192.0.2.0,proxy --pxe-service=BC_EFI,imgd,snponly --pxe-service=X86-64_EFI,imgd,snponly \
      --user=root --pid-file --log-facility=/dev/null &
    srv=$!
    servers+=("$srv")
    sleep 1
    dhcp_measure "$srv"
    nrounds+=("$out"); npeaks+="$(mib "$peak") "; nsplit=$now_split; ncpus+=("$cpu_us")
    [ "$peak" -le "$nrss" ] || nrss=$peak
  done
  # Each round's line: machines offers acks secs p50 p99 ack_p50 ack_p99
  # unanswered; the medians of each column (unanswered summed).
  local a b _n io ia is i50 i99 ia50 ia99 ierr no na ns n50 n99 na50 na99 nerr
  a=$(printf '%s\n' "${irounds[@]}" | columns_median)
  b=$(printf '%s\n' "${nrounds[@]}" | columns_median)
  read -r _n io ia is i50 i99 ia50 ia99 ierr <<<"$a"
  read -r _n no na ns n50 n99 na50 na99 nerr <<<"$b"
  if [ "$rounds" -gt 1 ]; then
    echo "  (proxyDHCP, $rounds rounds each taking turns; offer p99 ms per round: imgd $(printf '%s\n' "${irounds[@]}" | awk '{printf "%s ", $6}')/ dnsmasq $(printf '%s\n' "${nrounds[@]}" | awk '{printf "%s ", $6}'); ack p99: imgd $(printf '%s\n' "${irounds[@]}" | awk '{printf "%s ", $8}')/ dnsmasq $(printf '%s\n' "${nrounds[@]}" | awk '{printf "%s ", $8}'); peak RSS MiB: imgd $ipeaks/ dnsmasq $npeaks)"
  fi
  echo "proxyDHCP storm: $machines UEFI PXE machines within ${window}s (DISCOVER -> offer, then REQUEST to port 4011 -> ack; no retries; medians of $rounds):"
  printf '  %-34s imgd %8s      dnsmasq %8s      (goal: 0)\n' "machines without an ack" "$ierr" "$nerr"
  printf '  %-34s imgd %8s ms   dnsmasq %8s ms\n' "offer latency p50" "$i50" "$n50"
  printf '  %-34s imgd %8s ms   dnsmasq %8s ms\n' "offer latency p99" "$i99" "$n99"
  printf '  %-34s imgd %8s ms   dnsmasq %8s ms\n' "4011 ack latency p99" "$ia99" "$na99"
  # CPU per machine ranks the servers more steadily than a p99 a few tenths
  # of a ms long, as CPU per request does for the renders.
  local icpu ncpu
  icpu=$(printf '%s\n' "${icpus[@]}" | median); ncpu=$(printf '%s\n' "${ncpus[@]}" | median)
  printf '  %-34s imgd %8.1f us   dnsmasq %8.1f us   (offer + ack; per round: imgd %s/ dnsmasq %s)\n' "server CPU per machine" "$icpu" "$ncpu" \
    "$(printf '%.1f ' "${icpus[@]}")" "$(printf '%.1f ' "${ncpus[@]}")"
  printf '  %-34s imgd %8.1f MiB  dnsmasq %8.1f MiB  (goal: <= 2x; the highest of the rounds)\n' "server peak RSS" "$(calc "$rss / 1024")" "$(calc "$nrss / 1024")"
  printf '  %-34s imgd %s  dnsmasq %s\n' "  own memory / program pages, after" "$split" "$nsplit"
  figure "dhcp_errors${sfx:-}" "$ierr" "$nerr" count -
  figure "dhcp_offer_p99${sfx:-}" "$i99" "$n99" ms "$(calc "$i99 / ($n99 + 0.001)")"
  figure "dhcp_ack_p99${sfx:-}" "$ia99" "$na99" ms "$(calc "$ia99 / ($na99 + 0.001)")"
  figure "dhcp_cpu_us${sfx:-}" "$icpu" "$ncpu" us "$(calc "$ncpu / ($icpu + 0.001)")"
  figure "dhcp_peak_rss${sfx:-}" "$(calc "$rss / 1024")" "$(calc "$nrss / 1024")" MiB "$(calc "$rss / ($nrss + 1)")"
  [ "$ierr" = 0 ] || { echo "bench.sh storm: imgd left $ierr machines unanswered; its log:" >&2; tail -5 "$tmp/storm-dhcp.log" >&2; exit 1; }
}

# dhcp_measure PID: one storm (dhcp_rounds' locals) against the server PID,
# then the server stopped; sets out (the storm's line), cpu_us (the server's
# CPU time per machine, offer and ack), peak (its peak RSS, KiB) and
# now_split (rss_split after the storm).
dhcp_measure() {
  local t0; t0=$(cpu_ticks "$1")
  # shellcheck disable=SC2086 # the prefix is words, or nothing
  out=$(ip netns exec "$C" $cpin "$storm" dhcp "$machines" "$window")
  cpu_us=$(calc "($(cpu_ticks "$1") - $t0) / $(getconf CLK_TCK) * 1e6 / $machines")
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$1/status")
  now_split=$(rss_split "$1")
  stop_servers
}

# mib KIB: KiB as MiB with one decimal.
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# columns_median: lines of numbers in, one line out: each column's median
# (the last, a count of failures, summed).
columns_median() {
  python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
out = []
for c in range(len(rows[0])):
    v = sorted(float(r[c]) for r in rows)
    m = sum(v) if c == len(rows[0]) - 1 else v[(len(v) - 1) // 2]
    out.append(("%d" % m) if m == int(m) else ("%g" % m))
print(" ".join(out))
'
}

# rss_split PID: its resident memory now as "private / file-backed" MiB:
# what is its own (heap, stacks, relocated data) and the pages of its
# program and libraries (shared, dropped by the kernel under pressure).
rss_split() {
  awk '/^RssAnon/ {a = $2} /^RssFile/ {f = $2} END {printf "%4.1f / %4.1f MiB", a / 1024, f / 1024}' "/proc/$1/status"
}

# start_moto: moto on a free loopback port, stopped with the other servers;
# AWS_ENDPOINT_URL and test credentials exported for imgd, awscli and coldsnap.
start_moto() {
  need moto_server "pip install 'moto[server]'"
  local port; port=$(free_port)
  # moto answers StartSnapshot with BlockSize 512 (bytes); AWS says 524288.
  # imgd sends 512 KiB blocks whatever it says, coldsnap believes it (and
  # would send a thousand times the requests), so moto is told AWS's value.
  MOTO_EC2_LOAD_DEFAULT_AMIS=false setpriv --pdeathsig KILL -- python3 -c '
import sys
import moto.ebs.models as m
from moto.server import main
init = m.EBSSnapshot.__init__
def aws_block_size(self, *a, **k):
    init(self, *a, **k)
    self.block_size = 524288
m.EBSSnapshot.__init__ = aws_block_size
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
' "$port" >/dev/null 2>&1 &
  servers+=($!)
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
    AWS_SHARED_CREDENTIALS_FILE=/dev/null IMGD_STORE="$tmp/store" RUST_LOG=warn
  for _ in $(seq 100); do curl -s "$AWS_ENDPOINT_URL" >/dev/null && break; sleep 0.1; done
}

bench_sync() {
  local venv="$cache/bench-venv"
  if [ ! -x "$venv/bin/aws" ]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q awscli
  fi
  start_moto
  "$venv/bin/aws" s3 mb s3://bench-imgd >/dev/null && "$venv/bin/aws" s3 mb s3://bench-awscli >/dev/null
  local size=1GiB
  if [ "$quick" = 1 ]; then size=512MiB; fi
  local sets=(--set "disk.size=\"$size\"" --set 'formats=["raw"]')
  local entry; entry=$("$imgd" build hello "${sets[@]}" 2>/dev/null)
  local raw="$entry/disk.raw"
  echo "S3 upload of a $(du --apparent-size -h "$raw" | cut -f1) raw disk ($(du -h "$raw" | cut -f1) not zero) to moto on loopback, one run each:"
  local t0 t1 t2
  t0=$(now); "$imgd" sync hello "${sets[@]}" --bucket bench-imgd --s3-only >/dev/null; t1=$(now)
  "$venv/bin/aws" s3 cp --only-show-errors "$raw" s3://bench-awscli/disk.raw; t2=$(now)
  local ti ta; ti=$(calc "$t1 - $t0"); ta=$(calc "$t2 - $t1")
  printf '  %-44s imgd %6.2f s  aws s3 cp %6.2f s  ratio %.2fx  (goal >= 1.0)\n' \
    "upload (imgd: 16 MiB parts x4 + CRC32C)" "$ti" "$ta" "$(calc "$ta / $ti")"
  figure upload "$ti" "$ta" s "$(calc "$ta / $ti")"
  t0=$(now); "$imgd" sync hello "${sets[@]}" --bucket bench-imgd --s3-only >/dev/null; t1=$(now)
  "$venv/bin/aws" s3 cp --only-show-errors "$raw" s3://bench-awscli/disk.raw; t2=$(now)
  ti=$(calc "$t1 - $t0"); ta=$(calc "$t2 - $t1")
  printf '  %-44s imgd %6.2f s  aws s3 cp %6.2f s  ratio %.0fx  (imgd skips what S3 has by SHA-256)\n' \
    "the same upload again" "$ti" "$ta" "$(calc "$ta / $ti")"
  figure upload_again "$ti" "$ta" s "$(calc "$ta / $ti")"
  local out; out=$("$imgd" sync hello "${sets[@]}" --bucket bench-imgd --regions us-east-1 --json)
  local again; again=$("$imgd" sync hello "${sets[@]}" --bucket bench-imgd --regions us-east-1 --json)
  python3 - "$out" "$again" <<'PY'
import json, sys
first, again = (json.loads(a) for a in sys.argv[1:3])
print(f"  {'EBS direct snapshot':<44} {first['blocks_sent']} of {first['blocks_total']} blocks sent "
      f"({100 * first['blocks_sent'] / first['blocks_total']:.1f}%; zero blocks skipped)")
print(f"  {'re-run with nothing changed':<44} {again['uploaded_bytes']} bytes, {again['mutating_calls']} mutating calls  (goal: 0 and 0)")
print(f"figure sync.ebs_blocks_sent {first['blocks_sent']} {first['blocks_total']} blocks {first['blocks_sent'] / first['blocks_total']:.4f}")
print(f"figure sync.rerun_bytes {again['uploaded_bytes']} - bytes -")
print(f"figure sync.rerun_mutating_calls {again['mutating_calls']} - calls -")
PY
  stop_servers
}

# EBS direct at scale: a mostly-full disk (random data, so no block is zero)
# snapshotted by imgd and by coldsnap (the tool AWS publishes for this), one
# after the other against the same moto. moto, a Python server, bounds both
# here; the published figures from EC2 against real EBS are printed beside.
# coldsnap comes from crates.io (`cargo install coldsnap`, into imgd's cache)
# unless it is on PATH; QUICK runs compare only when it is already there.
bench_ebs() {
  start_moto
  local size=4GiB fill=3584
  if [ "$quick" = 1 ]; then size=512MiB fill=384; fi
  mkdir -p "$tmp/full"
  head -c "${fill}M" /dev/urandom > "$tmp/full/fill.bin"
  cat > "$tmp/full/full.toml" <<TOML
extends = "$PWD/profiles/hello.toml"
formats = ["raw"]
[disk]
size = "$size"
[[files]]
path = "/fill.bin"
source = "$tmp/full/fill.bin"
TOML
  local entry; entry=$("$imgd" build "$tmp/full/full.toml" 2>/dev/null)
  local raw="$entry/disk.raw"
  python3 -c "import boto3; boto3.client('s3', region_name='us-east-1').create_bucket(Bucket='bench-ebs')"
  # The artifacts go up first (sync's first step), so the timed run is the snapshot.
  "$imgd" sync "$tmp/full/full.toml" --bucket bench-ebs --s3-only >/dev/null 2>&1
  echo "EBS direct snapshot of a $size disk with ${fill} MiB of random data, to moto on loopback:"
  local t0 t1 out
  t0=$(now)
  out=$(/usr/bin/time -f '%M' -o "$tmp/imgd.rss" "$imgd" sync "$tmp/full/full.toml" --bucket bench-ebs --regions us-east-1 --json)
  t1=$(now)
  local ti blocks snap; ti=$(calc "$t1 - $t0")
  blocks=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["blocks_sent"])' "$out")
  snap=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["snapshot_seconds"])' "$out")
  # Blocks/s over the snapshot itself (StartSnapshot to CompleteSnapshot), as
  # coldsnap's upload is timed; the whole sync (observe, register) beside it.
  local ibps; ibps=$(calc "$blocks / $snap")
  printf '  %-40s %6d blocks in %6.2f s  %7.1f blocks/s  peak RSS %5.1f MiB  (whole sync %.2f s)\n' \
    "imgd sync (64 workers)" "$blocks" "$snap" "$ibps" "$(calc "$(cat "$tmp/imgd.rss") / 1024")" "$ti"
  local coldsnap; coldsnap=$(command -v coldsnap || true)
  if [ -z "$coldsnap" ] && [ -x "$cache/coldsnap/bin/coldsnap" ]; then coldsnap="$cache/coldsnap/bin/coldsnap"; fi
  if [ -z "$coldsnap" ] && [ "$quick" != 1 ]; then
    cargo install -q --locked --root "$cache/coldsnap" coldsnap >&3 2>&1 && coldsnap="$cache/coldsnap/bin/coldsnap"
  fi
  if [ -n "$coldsnap" ]; then
    t0=$(now)
    /usr/bin/time -f '%M' -o "$tmp/coldsnap.rss" "$coldsnap" --endpoint "$AWS_ENDPOINT_URL" --region us-east-1 \
      upload --no-progress --omit-zero-blocks "$raw" >/dev/null
    t1=$(now)
    local tc; tc=$(calc "$t1 - $t0")
    # --omit-zero-blocks: coldsnap then sends the same non-zero blocks imgd does.
    local cbps; cbps=$(calc "$blocks / $tc")
    printf '  %-40s %6d blocks in %6.2f s  %7.1f blocks/s  peak RSS %5.1f MiB  (upload only)\n' \
      "coldsnap upload --omit-zero-blocks" "$blocks" "$tc" "$cbps" "$(calc "$(cat "$tmp/coldsnap.rss") / 1024")"
    printf '  imgd / coldsnap: %.2fx the blocks/s  (goal >= 1.0)\n' "$(calc "$ibps / $cbps")"
    figure blocks_per_s "$ibps" "$cbps" blocks/s "$(calc "$ibps / $cbps")"
  else
    echo "  (coldsnap not installed: QUICK runs compare only when it is on PATH)"
    figure blocks_per_s "$ibps" - blocks/s -
  fi
  echo "  published, from EC2 to real EBS: coldsnap >1 GiB in ~16 s (awslabs/coldsnap#437);"
  echo "  NixOS/amis' 64-worker uploader, 4 GiB in ~18 s (NixOS/amis#364), <= 455 blocks/s"
  stop_servers
}

# The debian profile (locked bookworm base): a cold build of the rootfs
# tarball (empty package pool and base cache: download + mmdebstrap), a
# rebuild after a profile change (cached base), tarball only and with every
# format of the profile (qcow2, raw, VHD, tarball: 2.4 GB of images to write
# and hash), and what a script does today, mmdebstrap from the mirror every
# time. The every-format rebuild starts PAUSE seconds (default 30) after the
# build before it, as after an edit: ext4 skips inodes freed in the last half
# minute when it allocates, and each build frees its 16,000-path staging tree,
# so back-to-back builds spend ~1-2 s more making the next one (PAUSE=0 shows
# it). QUICK=1: the tarball rebuild only, on the usual cache.
bench_debian() {
  need mmdebstrap "apt-get install mmdebstrap"
  [ "$(id -u)" = 0 ] || { echo "bench.sh debian: needs root (mmdebstrap --mode=root)" >&2; exit 2; }
  local pkgs; pkgs=$(awk -F'[][]' '/^packages = / {gsub(/[" ]/, "", $2); print $2}' profiles/debian.toml)
  local cold=() re=() all=() mm=()
  IMGD_STORE="$tmp/store" "$imgd" build debian --format tar >/dev/null 2>&1
  for i in $(seq "$runs"); do
    if [ "$quick" != 1 ]; then
      rm -rf "$tmp/cache" "$tmp/store"; mkdir -p "$tmp/cache"; cp -r "$debs" "$tmp/cache/debs"
      t0=$(now); IMGD_CACHE="$tmp/cache" IMGD_STORE="$tmp/store" "$imgd" build debian --format tar >/dev/null 2>&1; t1=$(now)
      cold+=("$(calc "$t1 - $t0")")
      rm -f "$tmp/mm.tar"
      t0=$(now); SOURCE_DATE_EPOCH=1577836800 mmdebstrap --quiet --mode=root --variant=minbase --include="$pkgs" \
        bookworm "$tmp/mm.tar.zst" http://deb.debian.org/debian >/dev/null 2>&1; t1=$(now)
      mm+=("$(calc "$t1 - $t0")")
    fi
    t0=$(now); IMGD_STORE="$tmp/store" "$imgd" build debian --format tar --set "hostname=bench-$i-$RANDOM" >/dev/null 2>&1; t1=$(now)
    re+=("$(calc "$t1 - $t0")")
    if [ "$quick" != 1 ]; then
      sleep "${PAUSE:-30}"
      t0=$(now); IMGD_STORE="$tmp/store" "$imgd" build debian --set "hostname=bench-all-$i-$RANDOM" >/dev/null 2>&1; t1=$(now)
      all+=("$(calc "$t1 - $t0")")
    fi
  done
  local r; r=$(printf '%s\n' "${re[@]}" | median)
  echo "build debian, median of $runs runs:"
  if [ "$quick" != 1 ]; then
    local c m a; c=$(printf '%s\n' "${cold[@]}" | median); m=$(printf '%s\n' "${mm[@]}" | median)
    a=$(printf '%s\n' "${all[@]}" | median)
    printf '  %-60s %8.1f s\n' "imgd, cold (download + mmdebstrap + rootfs tarball)" "$c" \
      "mmdebstrap from the mirror (base tarball only)" "$m" \
      "imgd, rebuild after a profile change: rootfs tarball" "$r" \
      "imgd, rebuild after a profile change: every format (${PAUSE:-30} s later)" "$a"
    printf '  rebuild is %.1fx faster than mmdebstrap alone (%.1fx with every format)\n' \
      "$(calc "$m / $r")" "$(calc "$m / $a")"
    figure cold "$c" "$m" s "$(calc "$m / $c")"
    figure rebuild "$r" "$m" s "$(calc "$m / $r")"
    figure rebuild_all "$a" "$m" s "$(calc "$m / $a")"
  else
    printf '  %-52s %8.1f s\n' "imgd, rebuild after a profile change" "$r"
    figure rebuild "$r" - s -
  fi
}

# The peak RSS (KiB) of any qemu whose command line mentions PATTERN, sampled
# every 0.2 s into FILE until the sampler is killed.
rss_sampler() {
  local pattern=$1 file=$2 peak=0 p r
  echo 0 > "$file"
  while :; do
    for p in $(pgrep -f "$pattern" || true); do
      r=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$peak" ] && { peak=$r; echo "$peak" > "$file"; }
    done
    sleep 0.2
  done
}

# Four hello VMs (256 MiB each) by hand: seconds until every console says ready.
hand_four() {
  local entry=$1 cmdline=$2 pids=() t0 t1 i n
  t0=$(now)
  for i in 0 1 2 3; do
    setpriv --pdeathsig KILL -- qemu-system-x86_64 -machine q35 -cpu max -m 256 -smp 1 -accel tcg -display none \
      -monitor none -serial stdio -no-reboot -nic none -kernel "$entry/vmlinuz" -initrd "$entry/initrd" \
      -append "rdinit=/init $cmdline hand-four-$$" > "$tmp/hand$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 6000); do
    n=0
    for i in 0 1 2 3; do grep -q IMGD-HELLO-READY "$tmp/hand$i.log" 2>/dev/null && n=$((n + 1)); done
    [ "$n" -eq 4 ] && break
    sleep 0.05
  done
  t1=$(now)
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true
  [ "$n" -eq 4 ] || { echo "hand boot of four failed, see $tmp/hand*.log" >&2; return 1; }
  calc "$t1 - $t0"
}

bench_compose() {
  need qemu-system-x86_64 "apt-get install qemu-system-x86"; need python3 "apt-get install python3"
  export IMGD_STORE="$tmp/store"
  "$imgd" build hello >/dev/null 2>&1
  local entry; entry=$("$imgd" build hello --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
  local cmdline; cmdline=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["recipe"]["cmdline"])' "$entry/manifest.json")
  local total=() boot=() kboot=() hand=() rss=() i t0 t1 sampler
  local quick_boot=()
  if [ "$quick" = 1 ]; then quick_boot=(--boot kernel); fi
  for i in $(seq "$runs"); do
    # The machines netboot from imgd serve by default; `--boot kernel` is
    # the same four VMs booted the way the hand-written commands are.
    if [ "$quick" != 1 ]; then
      "$imgd" compose test profiles/hello.compose.toml --accel tcg --boot kernel --json > "$tmp/kcompose.json" 2>/dev/null
      kboot+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"][0]["seconds"])' "$tmp/kcompose.json")")
    fi
    rss_sampler 'qemu-system.*imgd-compose\.' "$tmp/rss" & sampler=$!
    t0=$(now)
    # QUICK boots the four by their kernels: the suite runs the same example
    # netbooted (tests/compose.rs), and four iPXE boots are a minute of CPU.
    "$imgd" compose test profiles/hello.compose.toml --accel tcg --json ${quick_boot[@]+"${quick_boot[@]}"} > "$tmp/compose.json" 2> "$tmp/compose.err" \
      || { kill "$sampler"; echo "imgd compose test failed:" >&2; tail -20 "$tmp/compose.err" >&2; return 1; }
    t1=$(now)
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    total+=("$(calc "$t1 - $t0")")
    rss+=("$(cat "$tmp/rss")")
    # Step 1 waits for all four consoles: the boot part of the run.
    boot+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"][0]["seconds"])' "$tmp/compose.json")")
    # QUICK leaves out the four hand-run boots: a smoke test of the mode
    # needs imgd's run, and they were half a minute of the suite's CPU.
    if [ "$quick" != 1 ]; then hand+=("$(hand_four "$entry" "$cmdline")"); fi
  done
  local mt mb mh=- ratio=- mr
  mt=$(printf '%s\n' "${total[@]}" | median); mb=$(printf '%s\n' "${boot[@]}" | median)
  if [ "${#hand[@]}" -gt 0 ]; then mh=$(printf '%s\n' "${hand[@]}" | median); ratio=$(calc "$mb / $mh"); fi
  mr=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
  echo "server + 3 hello nodes under TCG, median of $runs runs:"
  printf '  %-44s %10s %10s %9s\n' "" "imgd" "by hand" "ratio"
  local how="netbooted from imgd"
  if [ "$quick" = 1 ]; then how="kernels booted (quick, no hand run)"; fi
  printf '  %-44s %8.2f s %8s s %8sx\n' "four consoles ready, $how" "$mb" "$mh" "$ratio"
  if [ "${#kboot[@]}" -gt 0 ]; then
    local mk; mk=$(printf '%s\n' "${kboot[@]}" | median)
    printf '  %-44s %8.2f s %8.2f s %8.2fx\n' "four consoles ready, --boot kernel" "$mk" "$mh" "$(calc "$mk / $mh")"
    figure boot4_kernel "$mk" "$mh" s "$(calc "$mk / $mh")"
  fi
  printf '  %-44s %8.2f s %10s\n' "whole test: up, 8 steps, every VM stopped" "$mt" "-"
  printf '  %-44s %6d MiB\n' "peak qemu RSS of one node (256 MiB guest)" "$((mr / 1024))"
  echo "  (goal: the whole test <= 60 s; by hand = four qemu commands booting the kernel to their markers, no network, no steps)"
  figure boot4 "$mb" "$mh" s "$ratio"
  figure total "$mt" - s -
  figure node_rss_mib "$(calc "$mr / 1024")" - MiB -
}

# One boot of PROFILE (in $tmp/sp) with three fresh 1 GiB disks: prints the
# console log's path.
scratch_boot() {
  local profile=$1 i drives=() out
  for i in 1 2 3; do
    rm -f "$tmp/sd$i.img"; truncate -s 1G "$tmp/sd$i.img"
    drives+=(--drive "$tmp/sd$i.img,serial=scratch$i")
  done
  out=$(IMGD_ROOT="$tmp/sp" "$imgd" test "$profile" --format kernel --accel tcg --keep-logs "${drives[@]}" 2>&1) \
    || { echo "imgd test $profile failed:" >&2; echo "$out" | tail -20 >&2; return 1; }
  ls "$(echo "$out" | sed -n 's/.*console logs kept in //p')"/*.log
}

# Seconds after the kernel started: "Run /init" (the kernel's own stamp), and
# the "READY-AT <uptime>" line an init printed.
stamp_init() { sed -n 's/^\[ *\([0-9.]*\)\] Run \/init.*/\1/p' "$1" | head -n 1; }
stamp_ready() { sed -n 's/^READY-AT \([0-9.]*\).*/\1/p' "$1" | head -n 1; }

# A profile in $tmp/sp: hello with more TOML ($2) and an init whose body is $3.
scratch_profile() {
  local q='"""'
  printf 'extends = "%s"\nformats = ["ipxe"]\n%s\n[[files]]\npath = "/sbin/init"\nmode = "0755"\ncontent = %s#!/bin/busybox sh\n%s\necho "READY-AT $(/bin/busybox cut -d " " -f 1 /proc/uptime)"\necho IMGD-HELLO-READY\nexec /bin/busybox sh\n%s\n' \
    "$PWD/profiles/hello.toml" "$2" "$q" "$3" "$q" > "$tmp/sp/profiles/$1.toml"
}

bench_scratch() {
  need qemu-system-x86_64 "apt-get install qemu-system-x86"
  export IMGD_STORE="$tmp/store"
  mkdir -p "$tmp/sp/profiles"; cp -r hardware "$tmp/sp/"
  scratch_profile staged '[scratch]
match = { serial = "scratch*" }' ''
  # By hand, as people write it today (setup-local-disks style): the same
  # packages unpacked whole, disks by name, mdadm --create, default mkfs.ext4.
  # shellcheck disable=SC2016
  scratch_profile hand '[base]
debs = ["busybox-static", "libc6", "e2fsprogs", "libext2fs2", "libcom-err2", "libblkid1", "libuuid1", "mdadm", "libudev1"]
[kernel]
deb = "linux-image-[0-9]*"
extra_modules = ["md_mod", "raid0"]' '/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
v=$(/bin/busybox uname -r)
while read -r m; do /bin/busybox insmod "/lib/modules/$v/$m" 2>/dev/null; done < /lib/imgd/modules
while [ ! -b /dev/vdc ]; do /bin/busybox sleep 0.1; done
/sbin/mdadm --create /dev/md0 --level=0 --raid-devices=3 --run /dev/vda /dev/vdb /dev/vdc > /dev/null 2>&1
/sbin/mkfs.ext4 -q -F /dev/md0
/bin/busybox mkdir -p /scratch && /bin/busybox mount -t ext4 /dev/md0 /scratch'
  local a=() b=() base=() i log
  for i in $(seq "$runs"); do
    log=$(scratch_boot staged); a+=("$(stamp_ready "$log")"); base+=("$(stamp_init "$log")")
    rm -rf "$(dirname "$log")"
    log=$(scratch_boot hand); b+=("$(stamp_ready "$log")")
    rm -rf "$(dirname "$log")"
  done
  local ma mb mi
  ma=$(printf '%s\n' "${a[@]}" | median); mb=$(printf '%s\n' "${b[@]}" | median); mi=$(printf '%s\n' "${base[@]}" | median)
  echo "three blank 1 GiB disks to a mounted ext4 RAID-0 at boot, seconds after the kernel starts (TCG, median of $runs runs):"
  printf '  %-44s %8.2f s\n' "the kernel starts init (plain hello's point)" "$mi"
  printf '  %-44s %8.2f s %8.2f s %8.2fx\n' "/scratch ready: imgd [scratch] vs by hand" "$ma" "$mb" "$(calc "$ma / $mb")"
  echo "  (by hand = mdadm --create + mkfs.ext4 on disks named vda..vdc: no selection, no wipe, no settle;"
  echo "   imgd waits for the disk list to hold still 1 s and wipes both ends of every disk first)"
  figure ready "$ma" "$mb" s "$(calc "$ma / $mb")"
  figure init "$mi" - s -
}

one() {
  what_now=$1
  case "$1" in
    build) bench_build ;;
    boot) bench_boot ;;
    serve) bench_serve ;;
    storm) bench_storm ;;
    sync) bench_sync ;;
    ebs) bench_ebs ;;
    debian) bench_debian ;;
    compose) bench_compose ;;
    scratch) bench_scratch ;;
    *) echo "usage: $0 build|boot|serve|storm|sync|ebs|debian|compose|scratch|all" >&2; exit 2 ;;
  esac
}
if [ "$what" = all ]; then
  for m in build boot serve storm sync ebs debian compose scratch; do one "$m"; done
else
  one "$what"
fi
