#!/usr/bin/env bash
# Installs the Debian packages isol8r's tests, demo and benchmarks use, when they are missing.
# libseccomp2: the seccomp filter compiler (loaded through ctypes); busybox-static: test roots;
# gcc-multilib: the i386 probe of the cross-ABI seccomp test; bubblewrap: a benchmark peer;
# strace: `make strace`; iproute2: network checks; libpython3.11-testsuite: CPython's own
# regression tests, run in the default root (tests/test_default_root_programs.py); gcc: mkroot's C test;
# slirp4netns and passt (pasta): user-mode networking for `--net user` (src/isol8r/usernet.py);
# uidmap (newuidmap, newgidmap): rootless jails with subordinate ids (src/isol8r/userns.py);
# libcap-dev, libseccomp-dev, make and g++: bench/judge.py builds IOI's isolate from its source
# as a peer, and tests/test_isolate.py compiles a C++ submission.
set -eu
want="libseccomp2 busybox-static gcc-multilib bubblewrap strace iproute2 libnl-3-200 libnl-route-3-200 libpython3.11-testsuite gcc slirp4netns passt uidmap libcap-dev libseccomp-dev make g++"
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "isol8r: missing Debian packages:$missing (run as root: apt-get install$missing)" >&2
  exit 0
fi
echo "isol8r: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq $missing >/dev/null
