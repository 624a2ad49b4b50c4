// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// SeaBIOS (Debian's build, a client we did not write) on our fw_cfg, CMOS, i440FX/PIIX
// and PM models, on real KVM.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import { guest, kvmSkipReason, runVm } from '../helpers/vm';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);
const DEBUGCON = 4;
const COM1 = 0;
/** SeaBIOS's last words when nothing is bootable: everything before it has run. */
const BOOT_DONE = /No bootable device/;

function firmwareConfig(patch: Partial<MachineConfig> = {}): MachineConfig {
  return { ...defaultConfig(), boot: { kind: 'firmware' }, memoryBytes: 256 * 1024 * 1024, ...patch };
}

test('SeaBIOS boots with 1 CPU: finds QEMU, fw_cfg DMA, the RAM and 1 CPU', { skip }, async () => {
  const r = await runVm(firmwareConfig({ cpus: 1 }), { until: BOOT_DONE, untilRing: DEBUGCON, timeoutMs: 90_000 });
  const log = r.output[DEBUGCON];
  assert.equal(r.end.reason, 'stopped', log);
  assert.match(log, /Running on QEMU \(i440fx\)/);
  assert.match(log, /Found QEMU fw_cfg/);
  assert.match(log, /QEMU fw_cfg DMA interface supported/);
  // RAM from CMOS and etc/e820: 256 MiB = 640 KiB + (256 MiB - 1 MiB).
  assert.match(log, /qemu\/e820: addr 0x0000000000100000 len 0x000000000ff00000 \[RAM\]/);
  assert.match(log, /Found 3 PCI devices/);
  assert.match(log, /PCI: init bdf=00:01\.3 id=8086:7113/);
  assert.match(log, /Found 1 cpu\(s\) max supported 1 cpu\(s\)/);
  // The final map it hands the OS covers our RAM and reserves the firmware and KVM pages.
  assert.match(log, /0000000000100000 - 000000000f[0-9a-f]{6} = 1 RAM/);
  assert.match(log, /00000000feffc000 - 00000000ff000000 = 2 RESERVED/);
  assert.match(log, /00000000fffc0000 - 0000000100000000 = 2 RESERVED/);
});

test('SeaBIOS starts the second CPU through the in-kernel LAPIC (cpus=2)', { skip }, async () => {
  // Stop once the whole line is out (the ring may deliver half of it first).
  const r = await runVm(firmwareConfig({ cpus: 2 }), { until: /Found \d+ cpu\(s\) max supported \d+ cpu\(s\)\n|No bootable device/, untilRing: DEBUGCON, timeoutMs: 90_000 });
  const log = r.output[DEBUGCON];
  assert.equal(r.end.reason, 'stopped', `${JSON.stringify(r.end)}\n${log}`);
  assert.match(log, /Found 2 cpu\(s\) max supported 2 cpu\(s\)/);
});

test('an option ROM passed as genroms/ runs and writes to COM1', { skip }, async () => {
  const rom = guest('optionrom');
  const r = await runVm(firmwareConfig({ optionRoms: [rom] }), { until: BOOT_DONE, untilRing: DEBUGCON, timeoutMs: 90_000 });
  const log = r.output[DEBUGCON];
  assert.equal(r.end.reason, 'stopped', log);
  assert.match(log, /Searching bootorder for: \/rom@genroms\/optionrom\.bin/);
  assert.match(log, /Running option rom at c[0-9a-f]{3}:0003/);
  // COM1 is not connected, so SeaBIOS's serial console is off: only the ROM writes there.
  assert.equal(r.output[COM1], 'porthole option rom ok\r\n');
});

test('with COM1 connected, SeaBIOS uses it as its console (etc/sercon-port)', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-seabios-'));
  try {
    const file = path.join(dir, 'com1.txt');
    const serial = defaultConfig().serial.slice();
    serial[0] = { kind: 'file', path: file };
    const r = await runVm(firmwareConfig({ serial, optionRoms: [guest('optionrom')] }), { until: BOOT_DONE, untilRing: COM1, timeoutMs: 90_000 });
    assert.match(r.output[DEBUGCON], /sercon: using ioport 0x3f8/);
    assert.match(r.output[COM1], /SeaBIOS \(version [^)]+\)\r\n[\s\S]*porthole option rom ok\r\n[\s\S]*No bootable device/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing firmware image is one clear error', { skip: kvmSkipReason() ?? false }, async () => {
  const config = firmwareConfig({ boot: { kind: 'firmware', path: '/nonexistent/bios.bin' } });
  const outcome = await runVm(config, { timeoutMs: 30_000 }).then(
    (r) => (r.end.reason === 'error' ? r.end.message : `ended: ${r.end.reason}`),
    (e: Error) => e.message,
  );
  assert.equal(outcome, 'firmware not found: /nonexistent/bios.bin does not exist or cannot be read');
});

test('an option ROM without the 55 AA signature is refused with a clear error', { skip: kvmSkipReason() ?? false }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-rom-'));
  try {
    const bad = path.join(dir, 'bad.rom');
    fs.writeFileSync(bad, Buffer.alloc(1024));
    const outcome = await runVm(firmwareConfig({ optionRoms: [bad] }), { timeoutMs: 30_000 }).then(
      (r) => (r.end.reason === 'error' ? r.end.message : `ended: ${r.end.reason}`),
      (e: Error) => e.message,
    );
    assert.equal(outcome, `option ROM ${bad} is not a PC option ROM (it must start with the bytes 55 AA and be at least 512 bytes)`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
