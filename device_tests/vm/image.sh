#!/usr/bin/env bash
# Builds (once) the bootable arm64 Debian bookworm disk of the virtual Raspberry Pi; prints
# the folder holding it.
#
# Usage: device_tests/vm/image.sh CACHE_DIR
#
# mmdebstrap installs the packages into a folder, running their maintainer scripts under
# qemu-aarch64 (binfmt_misc), so systemd, sshd and the kernel's initramfs are set up as on
# a real install; the hooks below add the device user `pi` (key login, passwordless sudo,
# like Raspberry Pi OS), a static address for qemu's user-mode network and the console.
# mkfs.ext4 -d turns the folder into a disk image without loop mounts.
# The result, CACHE_DIR/image-KEY/ (disk.img, vmlinuz, initrd.img, the device user's key
# id_ed25519 and the VM's host key ssh_host_ed25519_key.pub), is keyed on a hash of this
# script; a new key builds beside the old one, then removes it.
set -euo pipefail
cache="${1:?usage: image.sh CACHE_DIR}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# procps: /bin/kill for the unit's ExecReload; util-linux: flock for deploy's lock;
# curl: the tests read /healthz inside the VM; kmod+udev: modules for the virtio devices.
PACKAGES=systemd,systemd-sysv,udev,kmod,dbus,openssh-server,sudo,python3,python3-venv,procps,util-linux,iproute2,curl,ca-certificates,linux-image-arm64,initramfs-tools,zstd
SIZE=4G
key="$(sha256sum "$0" | cut -c1-16)"
dest="$cache/image-$key"
if [ -f "$dest/.edgekit-complete" ]; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
tmp="$cache/image-$key.building"
# A killed build may leave mmdebstrap's /proc, /sys and /dev mounts in its root: unmount
# them before removing it, so rm never walks into the host's.
awk -v d="$tmp/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
rm -rf "$tmp"; mkdir -p "$tmp"
echo "building the VM's disk image in $dest (once; log: $cache/image-build.log)" >&2
ssh-keygen -q -t ed25519 -N "" -C edgekit-vm -f "$tmp/id_ed25519"

# Documentation, translations and drivers no virt machine has: smaller image, faster
# initramfs (MODULES=most copies every storage and network driver otherwise).
EXCLUDES=('/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*'
          '/usr/lib/modules/*/kernel/drivers/gpu/*' '/usr/lib/modules/*/kernel/sound/*'
          '/usr/lib/modules/*/kernel/drivers/media/*' '/usr/lib/modules/*/kernel/drivers/net/wireless/*'
          '/usr/lib/modules/*/kernel/drivers/infiniband/*' '/usr/lib/modules/*/kernel/drivers/staging/*'
          '/usr/lib/modules/*/kernel/drivers/net/ethernet/*' '/usr/lib/modules/*/kernel/drivers/iio/*')
dpkgopts=()
for e in "${EXCLUDES[@]}"; do dpkgopts+=(--dpkgopt="path-exclude=$e"); done
dpkgopts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')

root="$tmp/root"
# The initramfs gets only what a virt machine's root needs (MODULES=most copies ~2000
# modules one process each: minutes under qemu-user); init loads them (force_load).
mkdir -p "$tmp/initramfs/hooks" "$tmp/initramfs/conf.d"
echo MODULES=list > "$tmp/initramfs/conf.d/edgekit-vm"
printf '%s\n' '#!/bin/sh' '[ "$1" = prereqs ] && exit 0' '. /usr/share/initramfs-tools/hook-functions' \
    'for m in virtio_pci virtio_blk crc32c_generic ext4; do force_load $m; done' \
    > "$tmp/initramfs/hooks/edgekit-vm"
chmod 755 "$tmp/initramfs/hooks/edgekit-vm"
# Hooks run on the host with the root folder as $1; `chroot "$1"` runs arm64 binaries.
if ! mmdebstrap --variant=essential --arch=arm64 --include="$PACKAGES" "${dpkgopts[@]}" \
    --setup-hook="mkdir -p \"\$1/etc/initramfs-tools\" && cp -R $tmp/initramfs/. \"\$1/etc/initramfs-tools/\"" \
    --customize-hook='echo raspberrypi > "$1/etc/hostname"' \
    --customize-hook='printf "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n" > "$1/etc/hosts"' \
    --customize-hook='printf "/dev/vda / ext4 defaults,noatime 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='printf "[Match]\nName=en* eth*\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n" > "$1/etc/systemd/network/10-qemu.network"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd' \
    --customize-hook='chroot "$1" useradd -m -s /bin/bash -G sudo,video,plugdev pi' \
    --customize-hook='chroot "$1" usermod -p "*" pi' \
    --customize-hook='echo "pi ALL=(ALL) NOPASSWD:ALL" > "$1/etc/sudoers.d/010_pi-nopasswd"' \
    --customize-hook='chmod 440 "$1/etc/sudoers.d/010_pi-nopasswd"' \
    --customize-hook="install -d -m 700 \"\$1/home/pi/.ssh\" && install -m 600 $tmp/id_ed25519.pub \"\$1/home/pi/.ssh/authorized_keys\" && chroot \"\$1\" chown -R pi:pi /home/pi/.ssh" \
    --customize-hook='ln -sf /dev/null "$1/etc/systemd/system/systemd-timesyncd.service"' \
    "$SUITE" "$root" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main" > "$cache/image-build.log" 2>&1; then
    tail -30 "$cache/image-build.log" >&2
    exit 1
fi
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
cp "$kernel" "$tmp/vmlinuz"
cp "$root/boot/initrd.img-${kernel##*/vmlinuz-}" "$tmp/initrd.img"
cp "$root/etc/ssh/ssh_host_ed25519_key.pub" "$tmp/"
rm -f "$tmp/disk.img"
mkfs.ext4 -q -F -L edgekit-root -d "$root" "$tmp/disk.img" "$SIZE" >>"$cache/image-build.log" 2>&1
rm -rf "$root"
echo "$PACKAGES" > "$tmp/.edgekit-complete"

rm -rf "$dest"; mv "$tmp" "$dest"
for old in "$cache"/image-*; do
    [ "$old" = "$dest" ] || [ "$old" = "$cache/image-build.log" ] || rm -rf "$old"
done
echo "$dest"
