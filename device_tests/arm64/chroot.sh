#!/usr/bin/env bash
# Runs a command inside the arm64 userland as an emulated Raspberry Pi 4.
#
# Usage: device_tests/arm64/chroot.sh ROOTFS WORKDIR COMMAND [ARGS...]
#
# Everything is mounted inside a private mount namespace (unshare -m), so nothing is left
# mounted on the host when the command ends or is killed. Inside:
#   /proc    the rootfs's own directory: a Pi 4's cpuinfo and device-tree/model as plain
#            files, every other entry a link into the host's /proc (bound at /.hostproc).
#            LiteRT segfaults in allocate_tensors when it probes the host's x86 cpuinfo.
#   /work    WORKDIR (read-write): the wheel, reference answers, video, results
#   /coral   Coral's reference models and photos (read-only), when CORAL_DIR exists
#   /tests   this folder (read-only): the device tests; the package itself comes from
#            the wheel installed in the venv, never from the checkout
#   /cache   ARM64_CACHE (read-write): the wheelhouse and pip's cache
#   /dev, /sys, /etc/resolv.conf from the host; /tmp a fresh tmpfs
# QEMU_CPU defaults to cortex-a72 (a Pi 4): with qemu's default "max" CPU XNNPACK
# returns wrong answers (every photo -> one class on tf2_mobilenet_v2_1.0_224_ptq).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 ROOTFS WORKDIR COMMAND [ARGS...]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
rootfs="$(cd "$1" && pwd)"; work="$(cd "$2" && pwd)"; shift 2
coral="${CORAL_DIR:-}"
cache="${ARM64_CACHE:-}"

if [ "${_EDGEKIT_IN_NS:-}" != 1 ]; then
    exec env _EDGEKIT_IN_NS=1 unshare --mount --propagation private "$0" "$rootfs" "$work" "$@"
fi

bind() {  # bind SRC DEST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
bind /proc "$rootfs/.hostproc"
bind /dev "$rootfs/dev"
bind /sys "$rootfs/sys" ro
mkdir -p "$rootfs/tmp"; mount -t tmpfs -o size=2g,mode=1777 tmpfs "$rootfs/tmp"
bind "$work" "$rootfs/work"
bind "$here" "$rootfs/tests" ro
if [ -n "$coral" ] && [ -d "$coral" ]; then bind "$coral" "$rootfs/coral" ro; fi
if [ -n "$cache" ]; then mkdir -p "$cache"; bind "$cache" "$rootfs/cache"; fi
if [ -f /etc/resolv.conf ]; then
    touch "$rootfs/etc/resolv.conf"; mount --bind /etc/resolv.conf "$rootfs/etc/resolv.conf"
fi

exec env -i PATH=/opt/edgekit/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    QEMU_CPU="${QEMU_CPU:-cortex-a72}" PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ${EDGEKIT_ARM64_ENV:-} "$(command -v chroot)" "$rootfs" "$@"
