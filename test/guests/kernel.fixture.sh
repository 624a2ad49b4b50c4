#!/usr/bin/env bash
# Fixture: a real Debian amd64 kernel for the Linux direct-boot tests.
#   build/kernel/vmlinuz  the bzImage exactly as Debian ships it
#   build/kernel/vmlinux  the uncompressed ELF kernel found inside that bzImage
#   build/kernel/version  which package it came from
# Cached: does nothing when both files exist. Only /boot/vmlinuz-* is taken out of the
# package; its modules are never unpacked.
set -euo pipefail
cd "$(dirname "$0")/../.."

# ACPICA's iasl reads back the ACPI tables the Linux loader builds (test/unit/acpi.test.ts).
if ! command -v iasl >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends acpica-tools >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends acpica-tools >/dev/null; }
  else
    echo "kernel fixture: iasl is missing (sudo apt-get install acpica-tools); the ACPICA check will be skipped" >&2
  fi
fi

out=build/kernel
if [ -s "$out/vmlinuz" ] && [ -s "$out/vmlinux" ]; then
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb xz zstd od; do
  if ! command -v "$tool" >/dev/null; then
    echo "kernel fixture: $tool is missing (apt-get install xz-utils zstd dpkg)" >&2
    exit 1
  fi
done

# linux-image-amd64 is a metapackage; the kernel is in the package it depends on.
image_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
pkg=$(image_package || true)
if [ -z "$pkg" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "kernel fixture: linux-image-amd64 is unknown to apt; run 'sudo apt-get update'" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  pkg=$(image_package || true)
fi
if [ -z "$pkg" ]; then
  echo "kernel fixture: cannot find Debian's amd64 kernel package" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/porthole-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt's _apt user downloads into it
echo "kernel fixture: downloading $pkg"
(cd "$work" && apt-get download -qq "$pkg" >/dev/null)
deb=$(ls "$work"/*.deb)
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
vmlinuz=$(ls "$work"/boot/vmlinuz-* | head -n 1)

# Reads a little-endian integer of $2 bytes at offset $1 of the bzImage.
le() { od -An -t "u$2" -j "$1" -N "$2" --endian=little "$vmlinuz" | tr -d ' '; }

if [ "$(od -An -c -j 514 -N 4 "$vmlinuz" | tr -d ' ')" != "HdrS" ]; then
  echo "kernel fixture: $vmlinuz is not a bzImage" >&2
  exit 1
fi
setup_sects=$(le 497 1)
[ "$setup_sects" = 0 ] && setup_sects=4
# payload_offset counts from the start of the protected-mode code, which follows the
# setup sectors; the payload ends with 4 bytes giving the uncompressed size.
payload_offset=$(( (setup_sects + 1) * 512 + $(le 584 4) ))
payload_length=$(le 588 4)
head -c $((payload_offset + payload_length)) "$vmlinuz" | tail -c "$payload_length" | head -c $((payload_length - 4)) > "$work/payload"

magic=$(od -An -t x1 -N 4 "$work/payload" | tr -d ' ')
case "$magic" in
  fd377a58) xz -dc --single-stream < "$work/payload" > "$work/vmlinux" ;;
  28b52ffd) zstd -dcq < "$work/payload" > "$work/vmlinux" ;;
  1f8b*) gzip -dc < "$work/payload" > "$work/vmlinux" 2>/dev/null || [ -s "$work/vmlinux" ] ;;
  *) echo "kernel fixture: unknown compression (magic $magic) in $vmlinuz" >&2; exit 1 ;;
esac
if [ "$(od -An -t x1 -N 4 "$work/vmlinux" | tr -d ' ')" != 7f454c46 ]; then
  echo "kernel fixture: the payload of $vmlinuz did not decompress to an ELF file" >&2
  exit 1
fi

mkdir -p "$out"
cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$work/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
echo "$pkg $(basename "$vmlinuz")" > "$out/version"
echo "kernel fixture: $(cat "$out/version") ready in $out"
