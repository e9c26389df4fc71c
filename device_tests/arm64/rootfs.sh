#!/usr/bin/env bash
# Builds (once) the arm64 Debian bookworm userland the device tests run in; prints its path.
#
# Usage: device_tests/arm64/rootfs.sh CACHE_DIR
#
# The fast route: mmdebstrap's "extract" variant downloads python3.11-venv and its
# dependencies for arm64 and unpacks them (seconds), instead of debootstrap's second stage
# and apt under emulation (~17 min). No maintainer script runs, so what they would have
# made is made here on the host: the CA bundle (the host's), a Pi 4's /proc, /etc/hostname.
# systemd is there for its units only: the host's systemd-analyze verifies against them;
# procps for /bin/kill, which the unit's ExecReload runs (every Pi OS image has it).
# The result is cached in CACHE_DIR/rootfs-KEY, KEY hashing this script, the package list
# and the Pi files; a new key builds a new one beside it and removes stale ones.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:?usage: rootfs.sh CACHE_DIR}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PACKAGES=base-files,base-passwd,dash,bash,coreutils,procps,libstdc++6,libgcc-s1,python3.11-venv,python3-venv,ca-certificates,tzdata,systemd
key="$(cat "$0" "$here/pi4/cpuinfo" "$here/pi4/model" | sha256sum | cut -c1-16)"
dest="$cache/rootfs-$key"
if [ -f "$dest/.edgekit-complete" ]; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
tmp="$cache/rootfs-$key.building"
rm -rf "$tmp"
echo "building the arm64 userland in $dest (once; log: $cache/rootfs-build.log)" >&2
if ! mmdebstrap --quiet --variant=extract --arch=arm64 \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --include="$PACKAGES" "$SUITE" \
        "$tmp" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY $SUITE-security main" > "$cache/rootfs-build.log" 2>&1; then
    tail -20 "$cache/rootfs-build.log" >&2
    exit 1
fi

# A Pi 4's /proc: plain files for what identifies the board, links into the host's /proc
# (bound at /.hostproc by chroot.sh) for what processes need about themselves.
rm -rf "$tmp/proc"; mkdir -p "$tmp/proc/device-tree" "$tmp/.hostproc"
cp "$here/pi4/cpuinfo" "$tmp/proc/cpuinfo"
cp "$here/pi4/model" "$tmp/proc/device-tree/model"
for entry in self thread-self meminfo stat uptime loadavg version mounts filesystems sys net \
        cmdline swaps partitions; do
    ln -s "/.hostproc/$entry" "$tmp/proc/$entry"
done
mkdir -p "$tmp/etc/ssl/certs" "$tmp/work" "$tmp/coral" "$tmp/tests" "$tmp/cache" "$tmp/sys"
cp -L /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
echo raspberrypi > "$tmp/etc/hostname"
printf '%s\n' "$PACKAGES" "$SUITE" > "$tmp/.edgekit-complete"

rm -rf "$dest"; mv "$tmp" "$dest"
for old in "$cache"/rootfs-*; do
    [ "$old" = "$dest" ] || rm -rf "$old"
done
echo "$dest"
