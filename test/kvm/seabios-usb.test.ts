// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// SeaBIOS's xHCI, USB keyboard and USB mass storage drivers (clients we did not write) on our
// xHCI controller and emulated devices: with a USB stick as the only disk, SeaBIOS boots the
// test boot sector from it, and the boot sector reads the stick's second sector through int 13h.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultConfig, type MachineConfig, type UsbDeviceConfig } from '../../main/vmm/config';
import { guest, kvmSkipReason, runVm } from '../helpers/vm';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);
const DEBUGCON = 4;
const MARKER = 'PORTHOLE-USB-LBA1';

function stickImage(dir: string, bootSector: string, marker = MARKER): string {
  const image = Buffer.alloc(4 * 1024 * 1024);
  fs.readFileSync(bootSector).copy(image, 0);
  image.write(marker, 512, 'latin1');
  const file = path.join(dir, 'stick.img');
  fs.writeFileSync(file, image);
  return file;
}

function usbConfig(devices: UsbDeviceConfig[]): MachineConfig {
  return {
    ...defaultConfig(), boot: { kind: 'firmware' }, memoryBytes: 256 * 1024 * 1024, debugExit: true,
    debugcon: { kind: 'none' }, usb: { controller: 'xhci', devices },
  };
}

/** A good boot takes about 5 s in L1. */
const BOOT_MS = 45_000;

test('SeaBIOS boots from a USB stick on the xHCI (its only disk) and reads its second sector', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-boot-'));
  try {
    const stick = stickImage(dir, guest('usb-boot'));
    const r = await runVm(usbConfig([{ kind: 'storage', path: stick, readOnly: false }, { kind: 'keyboard' }, { kind: 'tablet' }]), { timeoutMs: BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x55 }, log);
    assert.match(log, /PCI: XHCI at 00:04\.0/);
    assert.match(log, /USB keyboard initialized/);
    assert.match(log, /Booting from Hard Disk/);
    assert.match(log, /usb-boot: running from the USB stick\nusb-boot: sector 1 holds the marker\n/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a read-only USB stick boots too', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-boot-'));
  try {
    const stick = stickImage(dir, guest('usb-boot'));
    const r = await runVm(usbConfig([{ kind: 'storage', path: stick, readOnly: true }]), { timeoutMs: BOOT_MS });
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x55 }, r.output[DEBUGCON]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing USB stick image is one clear error before boot', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-boot-'));
  try {
    const missing = path.join(dir, 'nope.img');
    const outcome = await runVm(usbConfig([{ kind: 'storage', path: missing, readOnly: false }]), { timeoutMs: 30_000 }).then(
      (end) => (end.end.reason === 'error' ? end.end.message : `ended: ${end.end.reason}`), (e: Error) => e.message);
    assert.equal(outcome, `disk image ${missing}: it does not exist`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
