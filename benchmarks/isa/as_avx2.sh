#!/usr/bin/env bash
# Run COMMAND as on an AVX2-only x86 CPU: CPUID hides AVX-512, VNNI, BF16 and AMX from every library
# (cpuid_mask.c, preloaded), /proc/cpuinfo's flags hide them too, and its model name says the ISA was masked, so
# every benchmark's CPU line and every ledger records it. Needs CPUID faulting (`cpuid_fault` in /proc/cpuinfo),
# a C compiler (the library is built into benchmarks/isa/build on first use) and a private mount namespace
# (root, or unprivileged user namespaces).
#   benchmarks/isa/as_avx2.sh .venv/bin/python benchmarks/search.py --out runs/bench-search-avx2
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -eq 0 ]; then
  echo "usage: benchmarks/isa/as_avx2.sh COMMAND [ARG ...]" >&2
  exit 2
fi
if ! grep -qw cpuid_fault /proc/cpuinfo 2>/dev/null; then
  echo "error: no CPUID faulting here (cpuid_fault is not in /proc/cpuinfo): the ISA cannot be masked" >&2
  exit 2
fi
lib="$here/build/libcpuid_mask.so"
if [ ! -f "$lib" ] || [ "$here/cpuid_mask.c" -nt "$lib" ]; then
  mkdir -p "$here/build"
  "${CC:-cc}" -O2 -Wall -shared -fPIC -o "$lib.tmp" "$here/cpuid_mask.c" -ldl
  mv "$lib.tmp" "$lib"
fi
masked="$here/build/cpuinfo.avx2.$$"  # one per invocation
sed -E -e '/^flags/ s/ (avx512[a-z0-9_]*|avx_vnni[a-z0-9_]*|amx_[a-z0-9_]*|avx_ifma|avx_ne_convert)\b//g' \
       -e '/^model name/ s/$/ (ISA masked to AVX2)/' /proc/cpuinfo > "$masked"
if [ "$(id -u)" = 0 ]; then ns=(unshare -m); else ns=(unshare -r -m); fi
exec "${ns[@]}" bash -c 'mount --bind "$0" /proc/cpuinfo || exit 2
rm -f "$0"  # the mount holds the file
export LD_PRELOAD="$1${LD_PRELOAD:+:$LD_PRELOAD}"
shift; exec "$@"' "$masked" "$lib" "$@"
