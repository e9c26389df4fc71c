#!/usr/bin/env bash
# Boots the virtual Raspberry Pi (image.sh's disk) under qemu-system-aarch64; runs in the
# foreground until the VM powers off or qemu is killed.
#
# Usage: device_tests/vm/boot.sh IMAGE_DIR SSH_PORT CONSOLE_LOG
#
# -M virt with a Pi 4's CPU (cortex-a72, 2 cores, 1 GiB) under TCG: /dev/kvm cannot run an
# arm64 guest on an x86 host. The kernel and initramfs are passed directly (no firmware).
# -snapshot: the cached disk is never written; the guest's writes live in a temporary
# overlay for as long as this qemu runs, so a guest reboot (qemu resets, same process)
# keeps them and the next boot.sh starts clean. User-mode networking forwards
# 127.0.0.1:SSH_PORT to the guest's sshd (the guest is 10.0.2.15, static in the image).
# The serial console goes to CONSOLE_LOG (kernel, systemd and getty output).
set -euo pipefail
img="${1:?usage: boot.sh IMAGE_DIR SSH_PORT CONSOLE_LOG}"
port="${2:?usage: boot.sh IMAGE_DIR SSH_PORT CONSOLE_LOG}"
console="${3:?usage: boot.sh IMAGE_DIR SSH_PORT CONSOLE_LOG}"
exec qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -accel tcg,thread=multi \
    -nodefaults -display none -monitor none -serial "file:$console" \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "root=/dev/vda rw console=ttyAMA0 net.ifnames=0 quiet systemd.show_status=1" \
    -drive "if=none,id=disk,file=$img/disk.img,format=raw,snapshot=on" \
    -device virtio-blk-pci,drive=disk \
    -netdev "user,id=net,hostfwd=tcp:127.0.0.1:$port-:22" \
    -device virtio-net-pci,netdev=net,romfile= \
    -device virtio-rng-pci
