#!/usr/bin/env bash
# Installs placecast's kernel settings and checks the running values.
#
#   sudo kernel-tuning/apply.sh           install 99-placecast.conf into /etc/sysctl.d and
#                                         99-placecast-limits.conf into /etc/security/limits.d,
#                                         apply the sysctls now (sysctl -w per line), then check
#        kernel-tuning/apply.sh --check   only compare the running values with the files
#
# Prints OK / MISMATCH / SKIP per setting; exits 0 when everything matches, 1 otherwise, 2 on a
# usage or permission error. Settings that are ceilings (file-max, somaxconn, ...) are OK when the
# running value is at least the file's. A key missing from /proc/sys (nf_conntrack not loaded) is
# SKIP. Limits are checked on this shell: limits.d applies to new login sessions only, and
# services started by systemd need LimitNOFILE= / LimitMEMLOCK= in their unit instead.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sysctl_src=$here/99-placecast.conf
limits_src=$here/99-placecast-limits.conf
sysctl_dst=/etc/sysctl.d/99-placecast.conf
limits_dst=/etc/security/limits.d/99-placecast-limits.conf

# Ceilings: a larger running value is fine.
at_least=" fs.file-max fs.nr_open net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_max_tw_buckets
 net.ipv4.tcp_max_orphans net.core.rmem_max net.core.wmem_max net.core.netdev_max_backlog
 net.netfilter.nf_conntrack_max vm.max_map_count "

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

mode=apply
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h|--help) usage; exit 0 ;;
  *) usage; exit 2 ;;
esac

# "key = value" lines of the sysctl file, comments and blank lines removed, value spaces squeezed.
settings() {
  sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$sysctl_src" | while IFS='=' read -r k v; do
    k=$(echo "$k" | tr -d '[:space:]')
    v=$(echo "$v" | tr -s '[:space:]' ' ' | sed -e 's/^ //' -e 's/ $//')
    printf '%s=%s\n' "$k" "$v"
  done
}

if [ "$mode" = apply ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "apply.sh: installing needs root (run with sudo, or use --check to only compare)" >&2
    exit 2
  fi
  install -m 0644 "$sysctl_src" "$sysctl_dst" || exit 2
  install -m 0644 -D "$limits_src" "$limits_dst" || exit 2
  echo "installed $sysctl_dst and $limits_dst"
  # One key at a time so a missing one (nf_conntrack not loaded) does not stop the rest; at boot
  # systemd-sysctl (or `sysctl --system`) reads the installed file.
  while IFS= read -r kv; do
    key=${kv%%=*}
    if [ -e "/proc/sys/${key//.//}" ]; then
      sysctl -q -w "$kv" >/dev/null || echo "could not set $kv (read-only /proc/sys in a container?)" >&2
    fi
  done < <(settings)
fi

status=0
report() { printf '%-9s %s\n' "$1" "$2"; }

echo "== sysctl (running values vs $sysctl_src)"
while IFS= read -r kv; do
  key=${kv%%=*}
  want=${kv#*=}
  path=/proc/sys/${key//.//}
  if [ ! -e "$path" ]; then
    report SKIP "$key (not in /proc/sys: module not loaded or not in this kernel)"
    continue
  fi
  have=$(tr -s '[:space:]' ' ' < "$path" | sed -e 's/^ //' -e 's/ $//')
  ok=0
  if [ "$have" = "$want" ]; then
    ok=1
  elif [[ "$at_least" == *" $key "* ]] && [[ "$have" =~ ^[0-9]+$ ]] && [[ "$want" =~ ^[0-9]+$ ]] && [ "$have" -ge "$want" ]; then
    ok=1
  fi
  if [ $ok = 1 ]; then
    report OK "$key = $have"
  else
    report MISMATCH "$key = $have (want $want)"
    status=1
  fi
done < <(settings)

echo "== limits of this shell (vs $limits_src)"
check_limit() { # name, running value, wanted value
  if [ "$2" = unlimited ] || { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ]; }; then
    report OK "$1 = $2"
  else
    report MISMATCH "$1 = $2 (want $3; limits.d applies at the next login, systemd units need Limit*=)"
    status=1
  fi
}
want_nofile=$(awk '$1=="*" && $2=="hard" && $3=="nofile" {print $4}' "$limits_src")
want_memlock=$(awk '$1=="*" && $2=="hard" && $3=="memlock" {print $4}' "$limits_src")
check_limit "nofile soft" "$(ulimit -Sn)" "$want_nofile"
check_limit "nofile hard" "$(ulimit -Hn)" "$want_nofile"
check_limit "memlock soft (KiB)" "$(ulimit -Sl)" "$want_memlock"
check_limit "memlock hard (KiB)" "$(ulimit -Hl)" "$want_memlock"
for f in "$sysctl_dst" "$limits_dst"; do
  if [ -f "$f" ]; then
    if cmp -s "$f" "$([ "$f" = "$sysctl_dst" ] && echo "$sysctl_src" || echo "$limits_src")"; then
      report OK "$f installed"
    else
      report MISMATCH "$f differs from this repository's copy"
      status=1
    fi
  else
    report MISMATCH "$f not installed"
    status=1
  fi
done
exit $status
