#!/usr/bin/env bash
# Installs and builds what the tests need: Debian packages (seabios, nasm, qemu for
# benchmarks), the test guests, and a Debian kernel for the Linux boot test.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -f /usr/share/seabios/bios-256k.bin ] || need+=(seabios)
command -v nasm >/dev/null || need+=(nasm)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v xz >/dev/null || need+=(xz-utils)
# kernel-unpack tests unpack a zstd payload as well.
command -v zstd >/dev/null || need+=(zstd)
command -v gcc >/dev/null || need+=(gcc)
command -v mkfs.fat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
# The rig's L1 runs the host's /usr: nvme-cli brings up NVMe SR-IOV virtual functions there.
command -v nvme >/dev/null || need+=(nvme-cli)
# Debian's tshark reads the USB captures (test/unit/usb-capture.test.ts); its debconf question
# (capture rights for non-root users) is answered no.
command -v tshark >/dev/null || need+=(tshark)
# qemu-img and qemu-io cross-check the qcow2 images (test/unit/qcow2*.test.ts).
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || need+=(qemu-utils)
# libslirp0: the user network backend (--nic user), loaded through koffi; L1 uses the host's /usr.
ls /usr/lib/*/libslirp.so.0 >/dev/null 2>&1 || need+=(libslirp0)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "fixtures: installing ${need[*]}"
    apt-get update -qq >/dev/null
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "fixtures: please install: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

mkdir -p build/guests
for src in test/guests/*.asm; do
  out="build/guests/$(basename "${src%.asm}").bin"
  stale=0
  [ -f "$out" ] || stale=1
  for dep in "$src" test/guests/*.inc; do
    [ -f "$dep" ] && [ "$dep" -nt "$out" ] && stale=1
  done
  if [ "$stale" = 1 ]; then
    nasm -f bin -I test/guests/ "$src" -o "$out"
  fi
done
for hook in test/guests/*.fixture.sh; do
  [ -f "$hook" ] && bash "$hook"
done
echo "fixtures: ready"
