#!/usr/bin/env bash
# Installs placecast's kernel settings and checks the running values.
#
#   kernel-tuning/apply.sh --dry-run   print what it would install and set, change nothing
#                                      (no root needed); exit 0, or 1 when the repository's
#                                      files disagree (the descriptor budget below)
#   sudo kernel-tuning/apply.sh        install 99-placecast.conf (plus net.ipv4.tcp_mem sized
#                                      from this host's RAM) into /etc/sysctl.d and
#                                      99-placecast-limits.conf into /etc/security/limits.d,
#                                      apply the sysctls now, then check
#        kernel-tuning/apply.sh --check   only compare the running values with the files
#
# Idempotent: a file is installed only when its content differs, a sysctl is written only when
# its running value differs, and a ceiling (file-max, somaxconn, ...) is only ever raised: a
# larger running value is OK and left alone. A second run changes nothing.
# Prints OK / SET / WOULD SET / MISMATCH / SKIP per item; exits 0 when everything matches, 1
# otherwise (--check, apply), 2 on a usage, input or permission error. A key missing from
# /proc/sys (nf_conntrack not loaded) is SKIP.
#
# tcp_mem (pages): min = MemTotal/16, pressure = MemTotal/8, max = MemTotal/4 (see the end of
# 99-placecast.conf). PLACECAST_MEMINFO=FILE reads MemTotal from FILE instead of /proc/meminfo
# (to preview another host's figures with --dry-run).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sysctl_src=$here/99-placecast.conf
limits_src=$here/99-placecast-limits.conf
unit_src=$here/../systemd/placecast.service
sysctl_dst=/etc/sysctl.d/99-placecast.conf
limits_dst=/etc/security/limits.d/99-placecast-limits.conf
meminfo=${PLACECAST_MEMINFO:-/proc/meminfo}

# Ceilings: a larger running value is fine and is never lowered.
at_least=" fs.file-max fs.nr_open net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_max_tw_buckets
 net.ipv4.tcp_max_orphans net.core.rmem_max net.core.wmem_max net.core.netdev_max_backlog
 net.netfilter.nf_conntrack_max vm.max_map_count "

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

mode=apply
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --dry-run|-n) mode=dry-run ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then usage >&2; exit 2; fi

status=0
bad_input=0 # the repository's files disagree with each other
report() { printf '%-9s %s\n' "$1" "$2"; }
die() { echo "apply.sh: $*" >&2; exit 2; }

# ---- tcp_mem from MemTotal
mem_kb=$(awk '$1 == "MemTotal:" && $3 == "kB" { print $2 }' "$meminfo" 2>/dev/null)
[[ "$mem_kb" =~ ^[0-9]+$ ]] || die "no MemTotal in $meminfo"
page=$(getconf PAGESIZE 2>/dev/null)
[[ "$page" =~ ^[0-9]+$ ]] && [ "$page" -gt 0 ] || page=4096
pages=$(( mem_kb * 1024 / page ))
tcp_min=$(( pages / 16 ))
tcp_pressure=$(( pages / 8 ))
tcp_max=$(( pages / 4 ))
tcp_mem="$tcp_min $tcp_pressure $tcp_max"
gib() { awk -v p="$1" -v s="$page" 'BEGIN { printf "%.1f GiB", p * s / 1073741824 }'; }
report INFO "tcp_mem from MemTotal $mem_kb kB = $pages pages of $page B: min 1/16 = $tcp_min ($(gib $tcp_min)), pressure 1/8 = $tcp_pressure ($(gib $tcp_pressure)), max 1/4 = $tcp_max ($(gib $tcp_max))"

# The file installed as $sysctl_dst: the repository's file plus this host's tcp_mem.
rendered() {
  cat "$sysctl_src"
  printf '\n# Appended by kernel-tuning/apply.sh for this host: MemTotal %s kB, %s-byte pages.\n' "$mem_kb" "$page"
  printf 'net.ipv4.tcp_mem = %s\n' "$tcp_mem"
}

# "key=value" lines of the rendered file, comments and blank lines removed, value spaces squeezed.
settings() {
  rendered | sed -e 's/#.*//' -e '/^[[:space:]]*$/d' | while IFS='=' read -r k v; do
    k=$(echo "$k" | tr -d '[:space:]')
    v=$(echo "$v" | tr -s '[:space:]' ' ' | sed -e 's/^ //' -e 's/ $//')
    printf '%s=%s\n' "$k" "$v"
  done
}

# Running value of a key, spaces squeezed; empty when the key does not exist.
running() {
  local path=/proc/sys/${1//.//}
  [ -e "$path" ] || return 1
  tr -s '[:space:]' ' ' < "$path" | sed -e 's/^ //' -e 's/ $//'
}

# 0 when the running value satisfies the wanted one (equal, or a ceiling at least as high).
satisfied() { # key, have, want
  [ "$2" = "$3" ] && return 0
  [[ "$at_least" == *" $1 "* ]] && [[ "$2" =~ ^[0-9]+$ ]] && [[ "$3" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ]
}

# ---- the descriptor budget: one number in the unit, the limits file and fs.nr_open
unit_nofile=$(sed -n 's/^LimitNOFILE=\([0-9]*\)[[:space:]]*$/\1/p' "$unit_src" 2>/dev/null | tail -n 1)
unit_memlock=$(sed -n 's/^LimitMEMLOCK=\(.*\)$/\1/p' "$unit_src" 2>/dev/null | tail -n 1)
lim() { awk -v t="$1" -v i="$2" '$1 == "placecast" && $2 == t && $3 == i { print $4 }' "$limits_src" | tail -n 1; }
soft_nofile=$(lim soft nofile); hard_nofile=$(lim hard nofile)
soft_memlock=$(lim soft memlock); hard_memlock=$(lim hard memlock)
nr_open=$(settings | sed -n 's/^fs\.nr_open=//p')
file_max=$(settings | sed -n 's/^fs\.file-max=//p')
[ -n "$hard_nofile" ] || die "no 'placecast hard nofile' line in $limits_src"

echo "== descriptor budget (systemd/placecast.service, $(basename "$limits_src"), $(basename "$sysctl_src"))"
if [ -z "$unit_nofile" ]; then
  report SKIP "LimitNOFILE (no $unit_src next to this directory)"
  unit_nofile=$hard_nofile
fi
if [ "$unit_nofile" = "$soft_nofile" ] && [ "$unit_nofile" = "$hard_nofile" ] && [ "$unit_nofile" = "$nr_open" ]; then
  report OK "N = $unit_nofile: LimitNOFILE = nofile soft/hard = fs.nr_open"
else
  report MISMATCH "LimitNOFILE=$unit_nofile, nofile soft=$soft_nofile hard=$hard_nofile, fs.nr_open=$nr_open: must be one number"
  status=1; bad_input=1
fi
if [[ "$file_max" =~ ^[0-9]+$ ]] && [ "$file_max" -ge $(( 2 * unit_nofile )) ]; then
  report OK "fs.file-max = $file_max >= 2N (both ends of N loopback connections)"
else
  report MISMATCH "fs.file-max = $file_max < 2N = $(( 2 * unit_nofile ))"
  status=1; bad_input=1
fi
if [ -n "$unit_memlock" ]; then
  case "$unit_memlock" in
    *G) unit_memlock_kb=$(( ${unit_memlock%G} * 1048576 )) ;;
    *M) unit_memlock_kb=$(( ${unit_memlock%M} * 1024 )) ;;
    *) unit_memlock_kb=$unit_memlock ;;
  esac
  if [ "$unit_memlock_kb" = "$hard_memlock" ] && [ "$soft_memlock" = "$hard_memlock" ]; then
    report OK "memlock: LimitMEMLOCK=$unit_memlock = memlock soft/hard $hard_memlock KiB"
  else
    report MISMATCH "LimitMEMLOCK=$unit_memlock vs memlock soft=$soft_memlock hard=$hard_memlock KiB"
    status=1; bad_input=1
  fi
fi

# ---- install and apply
install_file() { # src-content-command, destination
  local want
  want=$("$1"; echo x); want=${want%x}
  if [ -f "$2" ] && [ "$(cat "$2"; echo x)" = "${want}x" ]; then
    report OK "$2 installed and current"
    return
  fi
  case "$mode" in
    dry-run) report "WOULD SET" "install $2 ($(printf '%s' "$want" | wc -l) lines)" ;;
    check) report MISMATCH "$2 $([ -f "$2" ] && echo "differs from this repository's copy" || echo "not installed")"; status=1 ;;
    apply)
      install -d -m 0755 "$(dirname "$2")" || exit 2
      printf '%s' "$want" > "$2.apply-tmp" && chmod 0644 "$2.apply-tmp" && mv -f "$2.apply-tmp" "$2" || exit 2
      report SET "installed $2" ;;
  esac
}
limits_content() { cat "$limits_src"; }

if [ "$mode" = apply ] && [ "$(id -u)" != 0 ]; then
  echo "apply.sh: installing needs root (run with sudo; --dry-run or --check to only look)" >&2
  exit 2
fi

echo "== files"
install_file rendered "$sysctl_dst"
install_file limits_content "$limits_dst"

echo "== sysctl (running values vs $(basename "$sysctl_src") + tcp_mem)"
while IFS= read -r kv; do
  key=${kv%%=*}
  want=${kv#*=}
  if ! have=$(running "$key"); then
    report SKIP "$key (not in /proc/sys: module not loaded or not in this kernel)"
    continue
  fi
  if satisfied "$key" "$have" "$want"; then
    report OK "$key = $have"
    continue
  fi
  case "$mode" in
    dry-run) report "WOULD SET" "$key = $want (now $have)" ;;
    check) report MISMATCH "$key = $have (want $want)"; status=1 ;;
    apply)
      # One key at a time so a missing or read-only one does not stop the rest; at boot
      # systemd-sysctl (or `sysctl --system`) reads the installed file.
      if sysctl -q -w "$key=$want" >/dev/null 2>&1 && satisfied "$key" "$(running "$key")" "$want"; then
        report SET "$key = $want (was $have)"
      else
        report MISMATCH "$key = $have (want $want; could not set it: read-only /proc/sys in a container? set it on the host)"
        status=1
      fi ;;
  esac
done < <(settings)

echo "== limits of the running service"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 \
   && [ "$(systemctl show -p LoadState --value placecast.service 2>/dev/null)" = loaded ]; then
  svc_nofile=$(systemctl show -p LimitNOFILE --value placecast.service)
  if [ "$svc_nofile" = "$unit_nofile" ]; then
    report OK "placecast.service LimitNOFILE = $svc_nofile"
  else
    report MISMATCH "placecast.service LimitNOFILE = $svc_nofile (want $unit_nofile: reinstall the unit, daemon-reload)"
    status=1
  fi
else
  report SKIP "placecast.service not loaded (no systemd here, or the unit is not installed)"
fi

if [ "$mode" = dry-run ]; then
  echo "dry run: nothing was changed"
  exit $bad_input
fi
exit $status
