// L1-side USB checks shared by scenarios: finding devices in sysfs by port, serial and IDs,
// and the hot-plug round trips through the runner's QMP (unplug, replug, re-enumerate).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FAT_STICK, fatStickDigests } from './fat-stick';
import type { ScenarioContext } from './scenario';
import { SECTOR, STICKS, checkStickSector } from './sticks';

export const readTrim = (p: string): string => fs.readFileSync(p, 'utf8').trim();

export async function until<T>(what: string, timeoutMs: number, probe: () => T | null): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== null) return v;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The block device whose USB ancestor reports `serial`. */
export function blockDeviceWithSerial(serial: string): string | null {
  let names: string[] = [];
  try { names = fs.readdirSync('/sys/block').filter((n) => n.startsWith('sd')); } catch { return null; }
  for (const name of names) {
    // A disk may be half-registered or going away while this looks.
    try {
      for (let dir = fs.realpathSync(`/sys/block/${name}/device`); dir !== '/'; dir = path.dirname(dir)) {
        if (fs.existsSync(path.join(dir, 'idVendor')) && fs.existsSync(path.join(dir, 'serial'))) {
          if (readTrim(path.join(dir, 'serial')) === serial) return name;
          break;
        }
      }
    } catch { /* next */ }
  }
  return null;
}

export interface SysfsUsbDevice { name: string; id: string; serial: string; drivers: string[] }

/** USB devices (not interfaces, not root hubs) in sysfs, with the drivers bound to their interfaces. */
export function sysfsUsbDevices(): SysfsUsbDevice[] {
  const base = '/sys/bus/usb/devices';
  const out: SysfsUsbDevice[] = [];
  for (const name of fs.readdirSync(base).filter((n) => /^\d+-[\d.]+$/.test(n))) {
    // A device may go away (or not be filled in yet) between the listing and the reads.
    try {
      const d = path.join(base, name);
      const drivers = fs.readdirSync(d).filter((i) => i.startsWith(`${name}:`)).map((i) => {
        try { return path.basename(fs.readlinkSync(path.join(d, i, 'driver'))); } catch { return '-'; }
      });
      let serial = '';
      try { serial = readTrim(path.join(d, 'serial')); } catch { /* none */ }
      out.push({ name, id: `${readTrim(path.join(d, 'idVendor'))}:${readTrim(path.join(d, 'idProduct'))}`, serial, drivers });
    } catch { /* gone */ }
  }
  return out;
}

/** Reads a few known sectors of a raw-pattern stick; throws naming the first bad one. */
export function checkRawStick(dev: string, label: string, sizeMiB: number): void {
  const sectors = Number(readTrim(`/sys/block/${dev}/size`));
  if (sectors * 512 !== sizeMiB * 1048576) throw new Error(`/dev/${dev} has ${sectors} sectors, expected ${sizeMiB} MiB`);
  const fd = fs.openSync(`/dev/${dev}`, 'r');
  try {
    const buf = Buffer.alloc(SECTOR);
    for (const s of [0, 1, 4095, sectors - 1]) {
      fs.readSync(fd, buf, 0, SECTOR, s * SECTOR);
      const bad = checkStickSector(label, s, buf);
      if (bad) throw new Error(`/dev/${dev}: ${bad}`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${(r.stderr || r.stdout || r.error?.message || '').trim()}`);
  return r.stdout;
}

/** Mounts the FAT stick read-only and compares every known file with its digest. */
export async function checkFatStick(ctx: ScenarioContext): Promise<string> {
  const dev = await until(`a block device for the FAT stick ${FAT_STICK.serial}`, 60000, () => blockDeviceWithSerial(FAT_STICK.serial));
  const mnt = '/tmp/fatstick';
  fs.mkdirSync(mnt, { recursive: true });
  sh('mount', ['-t', 'vfat', '-o', 'ro,iocharset=iso8859-1', `/dev/${dev}`, mnt]);
  try {
    const want = fatStickDigests();
    for (const [name, digest] of Object.entries(want)) {
      const got = crypto.createHash('sha256').update(fs.readFileSync(path.join(mnt, name))).digest('hex');
      if (got !== digest) throw new Error(`${name} on the FAT stick has sha256 ${got}, expected ${digest}`);
    }
    ctx.log(`FAT stick /dev/${dev}: ${Object.keys(want).length} known files match`);
    return `FAT stick /dev/${dev} mounted with ${Object.keys(want).length} known files`;
  } finally {
    sh('umount', [mnt]);
  }
}

/**
 * stick0 through QMP: unplugged (L1's usb-storage lets go of it), plugged back (it takes it
 * again, same contents), then its port re-enumerates as another device (an FTDI serial
 * adapter, as a modem does after a mode switch) and finally as the stick again.
 */
export async function hotplugStick0(ctx: ScenarioContext): Promise<string> {
  const spec = STICKS.stick0;
  const before = await until('stick0 as a block device', 60000, () => blockDeviceWithSerial(spec.serial));
  const port = sysfsUsbDevices().find((d) => d.serial === spec.serial);
  if (!port) throw new Error('stick0 has no USB device in sysfs');
  ctx.log(`stick0: /dev/${before} on USB ${port.name} (${port.id}, drivers ${port.drivers.join(',')})`);

  await ctx.rig.unplug('stick0');
  await until('L1 letting go of stick0 (block device and USB device gone)', 30000,
    () => (blockDeviceWithSerial(spec.serial) === null && !sysfsUsbDevices().some((d) => d.name === port.name) ? true : null));
  ctx.log('stick0 unplugged: its block device and USB device are gone');

  await ctx.rig.plug('stick0');
  const again = await until('stick0 back as a block device', 60000, () => blockDeviceWithSerial(spec.serial));
  checkRawStick(again, spec.label, spec.sizeMiB);
  const back = sysfsUsbDevices().find((d) => d.serial === spec.serial);
  if (back?.name !== port.name) throw new Error(`stick0 came back on USB ${back?.name}, not on its port ${port.name}`);
  ctx.log(`stick0 replugged: /dev/${again} on USB ${back.name}, known contents read back`);

  // Re-enumeration: the same port now shows another product ID and another driver.
  await ctx.rig.unplug('stick0');
  await until('stick0 gone again', 30000, () => (sysfsUsbDevices().some((d) => d.name === port.name) ? null : true));
  await ctx.rig.qmp('chardev-add', { id: 'modemchr', backend: { type: 'ringbuf', data: {} } });
  const stickProps = (await ctx.rig.devices()).find((d) => d.id === 'stick0')!.props;
  await ctx.rig.plug('modem0', 'usb-serial', { bus: String(stickProps.bus), port: String(stickProps.port), chardev: 'modemchr' });
  // The root hub's port is the same; a full-speed device shows on the USB 2 bus of it.
  const portNumber = port.name.split('-')[1];
  const modem = await until('the port re-enumerating as an FTDI serial adapter with ftdi_sio bound', 60000, () => {
    const d = sysfsUsbDevices().find((x) => x.name.split('-')[1] === portNumber && x.id === '0403:6001');
    return d && d.id === '0403:6001' && d.drivers.includes('ftdi_sio') ? d : null;
  });
  ctx.log(`USB ${modem.name} re-enumerated as ${modem.id} (${modem.drivers.join(',')})`);
  await ctx.rig.unplug('modem0');
  await until('the serial adapter gone', 30000, () => (sysfsUsbDevices().some((d) => d.name === modem.name) ? null : true));
  await ctx.rig.plug('stick0');
  const last = await until('stick0 back after the re-enumeration', 60000, () => blockDeviceWithSerial(spec.serial));
  checkRawStick(last, spec.label, spec.sizeMiB);
  return `stick0 unplugged and replugged on USB ${port.name} through QMP (L1's usb-storage let go and took it again), ` +
    `re-enumerated as ${modem.id} (${modem.drivers.join(',')}) and back to ${port.id}`;
}

/** The usb-audio device is bound to snd-usb-audio, and QEMU's wav file exists on the rig host. */
export async function checkUsbAudio(ctx: ScenarioContext): Promise<string> {
  const audio = await until('usb-audio bound to snd-usb-audio', 60000,
    () => sysfsUsbDevices().find((d) => d.drivers.includes('snd-usb-audio')) ?? null);
  const cards = fs.readFileSync('/proc/asound/cards', 'utf8').trim();
  const files = await ctx.rig.hostFiles();
  const wav = files['usb-audio.wav'];
  if (!wav || !fs.existsSync(wav)) throw new Error(`QEMU's usb-audio wav file is not in the run's shared folder (${JSON.stringify(files)})`);
  ctx.log(`usb-audio ${audio.id} on USB ${audio.name}; /proc/asound/cards:\n${cards}\nwav on the rig host, L1 sees it as ${wav}`);
  return `usb-audio ${audio.id} bound to snd-usb-audio, its wav file lands on the rig host`;
}
