// Porthole's virtio-blk as Linux's own drivers see it: Porthole boots the L2 kit in L1 with a
// writable disk and a read-only one (porthole run --disk), and the checks run in L2's shell over
// Porthole's COM1. virtio-pci must bind 00:08.0 and use MSI-X, virtio_blk must make vda (two
// request queues, one per vCPU) and vdb of the images' sizes with the serial we gave, dd must read each image's known pattern, a
// write from L2 must be in the image file after Porthole exits, and vdb must be read-only. The
// same boot checks AHCI: ahci on 00:05.0, sda (a SATA image) and sr0 (an ISO on the CD-ROM),
// and a disc change while L2 runs (`porthole cdrom`): refused while sr_mod holds the tray locked,
// then an eject L2 sees as no medium, then a second ISO L2 reads.
// vdc is a qcow2 image over a raw backing file (made by L1's qemu-img, the rig host's through
// L1's /usr): L2 reads the backing data through it and writes into it, and afterwards
// `qemu-img check` finds it clean and `qemu-img convert` shows L2's bytes over the backing data.
// All three virtio disks must run on the disk I/O thread (their "rings handed" lines).
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { SerialConsole } from '../console';
import { l1ProjectDir } from '../paths';
import { consoleLogger, kitChecks, scenario, type ScenarioContext } from '../scenario';
import { freshStickCopy, md5File, SECTOR, type StickSpec } from '../sticks';

const WORK_DIR = '/tmp/virtio-l2';
const DISK: StickSpec = { label: 'l2vda', sizeMiB: 16, serial: '' };
const RO_DISK: StickSpec = { label: 'l2vdb', sizeMiB: 8, serial: '' };
const QCOW2_BASE: StickSpec = { label: 'l2vdc-base', sizeMiB: 8, serial: '' };
const QCOW2_WRITE_SECTOR = 3000;
const SERIAL = 'PH-VDA-0001';
const WRITE_SECTOR = 1000;
const SATA_DISK: StickSpec = { label: 'l2sda', sizeMiB: 8, serial: '' };
const CD_IMAGE: StickSpec = { label: 'l2sr0', sizeMiB: 4, serial: '' };
/** The disc put in while L2 runs: another size and pattern than the first. */
const CD_IMAGE_2: StickSpec = { label: 'l2sr0-second', sizeMiB: 2, serial: '' };
const MONITOR_SOCKET = `${WORK_DIR}/monitor.sock`;
const SATA_SERIAL = 'PH-SATA-0001';
const KIT_MODULES = 'virtio_pci,virtio_blk,ahci,sd_mod,sr_mod';

class UnexpectedGuestReset extends Error {}

interface Images {
  disk: string;
  roDisk: string;
  diskMd5: string;
  roDiskMd5: string;
  sata: string;
  sataMd5: string;
  iso: string;
  isoMd5: string;
  iso2: string;
  iso2Md5: string;
  /** A qcow2 overlay (cluster size 64 KiB, v3) over the raw `qcow2Base`. */
  qcow2: string;
  qcow2Base: string;
  qcow2BaseMd5: string;
}

/** The checks, for this scenario and for scripts run with npm run rig -- exec. */
export async function virtioL2(ctx: ScenarioContext): Promise<string> {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  // Nested SVM under QEMU TCG now and then resets L2 by itself (see smoke.ts and usb-l2.ts):
  // only then is the run tried again, on fresh images.
  for (let attempt = 1; ; attempt++) {
    try {
      return await bootAndCheck(ctx, cli, makeImages(ctx));
    } catch (e) {
      if (!(e instanceof UnexpectedGuestReset) || attempt >= 3) throw e;
      ctx.log(`${e.message}; running the virtio checks again (attempt ${attempt + 1} of 3)`);
    }
  }
}

if (require.main === module) scenario('virtio-l2', virtioL2);

function makeImages(ctx: ScenarioContext): Images {
  const copy = (spec: StickSpec) => freshStickCopy(WORK_DIR, spec);
  const disk = copy(DISK);
  const roDisk = copy(RO_DISK);
  const sata = copy(SATA_DISK);
  const iso = copy(CD_IMAGE);
  const iso2 = copy(CD_IMAGE_2);
  const qcow2Base = copy(QCOW2_BASE);
  const qcow2 = path.join(WORK_DIR, 'l2vdc.qcow2');
  fs.rmSync(qcow2, { force: true });
  // A relative backing name: Porthole resolves it against the overlay's folder.
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.basename(qcow2Base), '-F', 'raw', qcow2], { cwd: WORK_DIR });
  const images = {
    disk, roDisk, diskMd5: md5File(disk), roDiskMd5: md5File(roDisk), sata, sataMd5: md5File(sata), iso, isoMd5: md5File(iso),
    iso2, iso2Md5: md5File(iso2),
    qcow2, qcow2Base, qcow2BaseMd5: md5File(qcow2Base),
  };
  ctx.log(`AHCI images: ${sata} (md5 ${images.sataMd5}), ${iso} on the CD-ROM (md5 ${images.isoMd5})`);
  ctx.log(`images: ${disk} (md5 ${images.diskMd5}), ${roDisk} read-only (md5 ${images.roDiskMd5}), ${qcow2} over ${qcow2Base} (md5 ${images.qcow2BaseMd5})`);
  return images;
}

async function bootAndCheck(ctx: ScenarioContext, cli: string, images: Images): Promise<string> {
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '2',
    '--serial', 'stdio', '--verbose', '--stats',
    '--disk', `${images.disk},serial=${SERIAL},queues=2`, '--disk', `${images.roDisk},ro,name=ro`,
    '--disk', `${images.sata},bus=sata,serial=${SATA_SERIAL},name=sata`, '--cdrom', `${images.iso},name=cd`,
    '--disk', `${images.qcow2},name=qcow2`, '--monitor', MONITOR_SOCKET,
  ];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' } });
  let guestReset = false;
  const stderr: string[] = [];
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) {
      if (!l.trim()) continue;
      stderr.push(l);
      if (l.includes('porthole: guest reset') && !guestReset) {
        guestReset = true;
        vm.kill('SIGKILL');
      }
      ctx.log(`porthole: ${l}`);
    }
  });
  try {
    return await runChecks(ctx, vm, images, stderr);
  } catch (e) {
    vm.kill('SIGKILL');
    if (guestReset) throw new UnexpectedGuestReset(`the L2 guest reset by itself (${(e as Error).message.split('\n')[0]})`);
    throw e;
  }
}

async function runChecks(ctx: ScenarioContext, vm: ChildProcess, images: Images, stderr: string[]): Promise<string> {
  const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => {
    ctx.log(`CHECK FAILED: ${why}`);
    failures.push(why);
  };
  await con.waitForShell(420000);
  await con.run('for i in $(seq 60); do [ -e /sys/block/vda ] && [ -e /sys/block/vdb ] && [ -e /sys/block/vdc ] && break; sleep 0.5; done');
  await kitChecks(ctx, con, 2, 60000);

  const pci = await con.run('d=/sys/bus/pci/devices/0000:00:08.0; echo "driver $(basename $(readlink $d/driver))"; echo "vdriver $(basename $(readlink $d/virtio*/driver))"; for i in $d/msi_irqs/*; do echo "msi_irq ${i##*/} $(cat $i)"; done; grep -E "virtio|CPU" /proc/interrupts');
  ctx.log(`00:08.0 and its interrupts:\n${pci.output}`);
  if (!/^driver virtio-pci$/m.test(pci.output)) fail('virtio-pci did not bind 00:08.0');
  if (!/^vdriver virtio_blk$/m.test(pci.output)) fail('virtio_blk did not bind the virtio device of 00:08.0');
  const msix = [...pci.output.matchAll(/^msi_irq (\d+) msix$/gm)].map((m) => m[1]);
  // One count per CPU column: the interrupt may have gone to any vCPU.
  const fired = msix.map((irq) => (new RegExp(`^\\s*${irq}:((?:\\s+\\d+)+)`, 'm').exec(pci.output)?.[1] ?? '').trim().split(/\s+/).reduce((n, c) => n + (Number(c) || 0), 0));
  if (msix.length < 3) fail(`00:08.0 has ${msix.length} MSI-X vectors in sysfs (expected config + 2 request queues)`);
  else if (!fired.some((n) => n > 0)) fail(`virtio-blk's MSI-X vectors (IRQs ${msix.join(', ')}) never fired`);
  else found.push(`virtio-pci + virtio_blk on 00:08.0 with ${msix.length} MSI-X vectors (${fired.join('/')} interrupts)`);

  const blocks = await con.runOk('for b in /sys/block/vd*; do echo "${b##*/} $(cat $b/size) $(cat $b/ro) $(cat $b/serial 2>/dev/null)"; done');
  ctx.log(`virtio disks (name sectors ro serial):\n${blocks}`);
  const line = (name: string) => blocks.split('\n').map((l) => l.trim().split(/\s+/)).find((p) => p[0] === name);
  const vda = line('vda');
  const vdb = line('vdb');
  if (!vda || Number(vda[1]) !== DISK.sizeMiB * 2048 || vda[2] !== '0') fail(`vda is ${vda?.join(' ') ?? 'missing'}, expected ${DISK.sizeMiB * 2048} sectors, writable`);
  else if (vda[3] !== SERIAL) fail(`vda's serial is "${vda[3] ?? ''}", expected ${SERIAL}`);
  else found.push(`vda: ${DISK.sizeMiB} MiB, serial ${SERIAL}`);
  const mq = await con.run('ls /sys/block/vda/mq | wc -l');
  if (mq.output.trim() !== '2') fail(`vda has ${mq.output.trim()} blk-mq hardware queues, expected 2 (VIRTIO_BLK_F_MQ, 2 vCPUs)`);
  else found.push('vda: 2 request queues (MQ)');
  if (!vdb || Number(vdb[1]) !== RO_DISK.sizeMiB * 2048 || vdb[2] !== '1') fail(`vdb is ${vdb?.join(' ') ?? 'missing'}, expected ${RO_DISK.sizeMiB * 2048} sectors, read-only`);

  let marker = '';
  let discarded = false;
  if (vda) {
    const sum = (await con.run('dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | md5sum', 300000)).output;
    if (!sum.includes(images.diskMd5)) fail(`md5sum of /dev/vda in L2 is "${sum.trim()}", the image's is ${images.diskMd5}`);
    else found.push('md5 of dd of vda in L2 matches the image');
    marker = `PORTHOLE-VIRTIO-WROTE-${crypto.randomBytes(6).toString('hex')}`;
    const w = await con.run(`printf '%s' ${marker} > /tmp/marker && dd if=/tmp/marker of=/dev/vda bs=512 seek=${WRITE_SECTOR} conv=sync,fsync 2>&1 && sync`, 120000);
    if (w.status !== 0) fail(`writing sector ${WRITE_SECTOR} of /dev/vda failed: ${w.output}`);
    // Discard: Linux sees it in the queue limits; busybox's blkdiscard (when the kit has it) punches 1 MiB at 8 MiB.
    const limits = await con.run('cat /sys/block/vda/queue/discard_max_bytes; command -v blkdiscard && blkdiscard -o 8388608 -l 1048576 /dev/vda && echo DISCARDED');
    ctx.log(`discard: ${limits.output.replace(/\n/g, ' / ')}`);
    if (!(Number(limits.output.trim().split('\n')[0]) > 0)) fail(`vda has no discard (discard_max_bytes ${limits.output.trim().split('\n')[0]})`);
    discarded = /^DISCARDED$/m.test(limits.output);
    const r = await con.run(`a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>&1; b=$(cut -d' ' -f1 /proc/uptime); echo "elapsed $a $b"`, 300000);
    const m = /elapsed ([\d.]+) ([\d.]+)/.exec(r.output);
    if (m) found.push(`16 MiB direct read ${(DISK.sizeMiB * 1.048576 / (Number(m[2]) - Number(m[1]))).toFixed(1)} MB/s (no QEMU comparison: not a benchmark)`);
  }
  if (vdb) {
    const w = await con.run('dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>&1', 120000);
    if (w.status === 0) fail(`a write to the read-only /dev/vdb succeeded: ${w.output}`);
    const sum = (await con.run('md5sum /dev/vdb', 300000)).output;
    if (!sum.includes(images.roDiskMd5)) fail(`md5sum of /dev/vdb is "${sum.trim()}", the image's is ${images.roDiskMd5}`);
    else if (w.status !== 0 && vdb[2] === '1') found.push('vdb: ro=1, dd refused, contents match');
  }
  const sataMarker = await ahciChecks(ctx, con, images, fail, found);
  let qcow2Marker = '';
  const vdc = line('vdc');
  if (!vdc || Number(vdc[1]) !== QCOW2_BASE.sizeMiB * 2048 || vdc[2] !== '0') fail(`vdc (qcow2) is ${vdc?.join(' ') ?? 'missing'}, expected ${QCOW2_BASE.sizeMiB * 2048} sectors, writable`);
  else {
    const sum = (await con.run('dd if=/dev/vdc bs=1M iflag=direct 2>/dev/null | md5sum', 300000)).output;
    if (!sum.includes(images.qcow2BaseMd5)) fail(`md5sum of /dev/vdc (qcow2 over its backing file) is "${sum.trim()}", the backing file's is ${images.qcow2BaseMd5}`);
    else found.push('vdc (qcow2): reads its raw backing file through the overlay');
    qcow2Marker = `PORTHOLE-QCOW2-WROTE-${crypto.randomBytes(6).toString('hex')}`;
    const w = await con.run(`printf '%s' ${qcow2Marker} > /tmp/qmarker && dd if=/tmp/qmarker of=/dev/vdc bs=512 seek=${QCOW2_WRITE_SECTOR} conv=sync,fsync 2>&1 && dd if=/dev/urandom of=/dev/vdc bs=4k seek=300 count=64 conv=fsync 2>&1 && sync`, 120000);
    if (w.status !== 0) fail(`writing to /dev/vdc (qcow2) failed: ${w.output}`);
  }
  const qcow2Tail = qcow2Marker ? (await con.run('dd if=/dev/vdc bs=4k skip=300 count=64 iflag=direct 2>/dev/null | md5sum', 120000)).output.trim().split(/\s+/)[0] : '';
  const complaints = await con.run('dmesg | grep -iE "virtio|vd[ab]|I/O error|blk_update" | tail -30');
  ctx.log(`L2 dmesg (virtio lines):\n${complaints.output}`);
  if (/I\/O error|blk_update_request/i.test(complaints.output.replace(/vdb[^\n]*/g, ''))) fail(`L2 reported I/O errors on vda: ${complaints.output}`);

  con.send('poweroff -f\n');
  let timer: NodeJS.Timeout | undefined;
  const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
  clearTimeout(timer);
  if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  if (marker) {
    const fd = fs.openSync(images.disk, 'r');
    const sector = Buffer.alloc(SECTOR);
    fs.readSync(fd, sector, 0, SECTOR, WRITE_SECTOR * SECTOR);
    fs.closeSync(fd);
    const text = sector.subarray(0, marker.length).toString('latin1');
    if (text !== marker) fail(`sector ${WRITE_SECTOR} of ${images.disk} starts "${text.replace(/[^\x20-\x7e]/g, '.')}" after Porthole exited, expected L2's "${marker}"`);
    else found.push(`L2's write to sector ${WRITE_SECTOR} is in the image file`);
  }
  if (discarded) {
    const hole = fs.readFileSync(images.disk).subarray(8 * 1048576, 9 * 1048576);
    if (!hole.every((b) => b === 0)) fail('blkdiscard of 1 MiB at 8 MiB left data in the image');
    else found.push('blkdiscard in L2 punched 1 MiB out of the image');
  }
  if (md5File(images.roDisk) !== images.roDiskMd5) fail('the read-only image changed');
  if (md5File(images.iso) !== images.isoMd5) fail('the ISO changed');
  if (sataMarker) {
    const sector = fs.readFileSync(images.sata).subarray(WRITE_SECTOR * SECTOR, WRITE_SECTOR * SECTOR + sataMarker.length).toString('latin1');
    if (sector !== sataMarker) fail(`sector ${WRITE_SECTOR} of ${images.sata} starts "${sector.replace(/[^\x20-\x7e]/g, '.')}" after Porthole exited, expected L2's "${sataMarker}"`);
    else found.push(`L2's write through ahci/sda is in the SATA image`);
  }
  if (qcow2Marker) {
    try {
      execFileSync('qemu-img', ['check', images.qcow2], { encoding: 'utf8' });
      found.push('qemu-img check: the qcow2 image L2 wrote is clean');
    } catch (e) {
      fail(`qemu-img check ${images.qcow2} after L2's writes: ${(e as { stdout?: string }).stdout ?? (e as Error).message}`);
    }
    const raw = path.join(WORK_DIR, 'l2vdc-converted.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', images.qcow2, raw]);
    const seen = fs.readFileSync(raw);
    const base = fs.readFileSync(images.qcow2Base);
    const text = seen.subarray(QCOW2_WRITE_SECTOR * SECTOR, QCOW2_WRITE_SECTOR * SECTOR + qcow2Marker.length).toString('latin1');
    const tail = crypto.createHash('md5').update(seen.subarray(300 * 4096, 364 * 4096)).digest('hex');
    // Everything else is the backing file's.
    base.set(seen.subarray(QCOW2_WRITE_SECTOR * SECTOR, (QCOW2_WRITE_SECTOR + 1) * SECTOR), QCOW2_WRITE_SECTOR * SECTOR);
    base.set(seen.subarray(300 * 4096, 364 * 4096), 300 * 4096);
    if (text !== qcow2Marker) fail(`qemu-img convert of ${images.qcow2}: sector ${QCOW2_WRITE_SECTOR} starts "${text.replace(/[^\x20-\x7e]/g, '.')}", expected L2's "${qcow2Marker}"`);
    else if (tail !== qcow2Tail) fail(`qemu-img convert of ${images.qcow2}: the 256 KiB L2 wrote at 1200 KiB has md5 ${tail}, L2 read ${qcow2Tail}`);
    else if (!seen.equals(base)) fail(`qemu-img convert of ${images.qcow2}: bytes outside L2's writes differ from the backing file`);
    else found.push('qemu-img convert shows L2\'s qcow2 writes over the backing data');
    if (md5File(images.qcow2Base) !== images.qcow2BaseMd5) fail('the qcow2 image\'s backing file changed');
  }
  // vda, vdb and vdc (qcow2) ran on the disk I/O thread (ioeventfd notifies, irqfd interrupts).
  const handed = (name: string) => stderr.some((l) => l.includes(`${name}: rings handed to the disk I/O thread`));
  const kept = ['disk0', 'ro', 'qcow2'].filter((name) => !handed(name));
  if (kept.length > 0) fail(`virtio-blk did not hand the rings of ${kept.join(', ')} to the disk I/O thread (no "rings handed" line)`);
  if (stderr.some((l) => /did not hand the rings back|disk data plane: (internal error|cannot start)/.test(l))) {
    fail(`the disk I/O thread misbehaved: ${stderr.filter((l) => /did not hand the rings back|disk data plane/.test(l)).join(' | ')}`);
  }
  const stats = stderr.filter((l) => /^\s*(disk0|ro|qcow2|sata|cd|ahci)\/[a-z-]+\s/.test(l)).map((l) => l.trim().replace(/\s+/g, ' ')).join(', ');
  if (stats) ctx.log(`disk counters: ${stats}`);
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')}`);
  return found.join('; ');
}

/**
 * The AHCI checks: Linux's ahci binds 00:05.0 with MSI, sd_mod makes sda of the SATA image and
 * sr_mod sr0 of the ISO; dd of each matches its image, and a write to sda's sector 1000 is
 * made (checked in the image once Porthole has exited). Returns that write's marker, or ''.
 */
async function ahciChecks(ctx: ScenarioContext, con: SerialConsole, images: Images, fail: (why: string) => void, found: string[]): Promise<string> {
  await con.run('for i in $(seq 60); do [ -e /sys/block/sda ] && [ -e /sys/block/sr0 ] && break; sleep 0.5; done');
  const pci = await con.run('d=/sys/bus/pci/devices/0000:00:05.0; echo "driver $(basename $(readlink $d/driver))"; for i in $d/msi_irqs/*; do echo "msi_irq ${i##*/} $(cat $i)"; done; grep -E "ahci" /proc/interrupts; for b in sda sr0; do echo "$b $(cat /sys/block/$b/size) $(cat /sys/block/$b/ro) $(cat /sys/block/$b/device/model)"; done');
  ctx.log(`00:05.0 (AHCI) and its disks:\n${pci.output}`);
  if (!/^driver ahci$/m.test(pci.output)) {
    fail('ahci did not bind 00:05.0');
    return '';
  }
  const msi = /^msi_irq (\d+) msi$/m.exec(pci.output);
  found.push(`ahci on 00:05.0${msi ? ' with MSI' : ' (INTx)'}`);
  if (!msi) fail('ahci on 00:05.0 does not use MSI');
  const sda = /^sda (\d+) (\d)/m.exec(pci.output);
  const sr0 = /^sr0 (\d+) (\d)/m.exec(pci.output);
  let marker = '';
  if (!sda || Number(sda[1]) !== SATA_DISK.sizeMiB * 2048 || sda[2] !== '0') fail(`sda is ${sda?.[0] ?? 'missing'}, expected ${SATA_DISK.sizeMiB * 2048} sectors, writable`);
  else {
    const sum = (await con.run('dd if=/dev/sda bs=1M iflag=direct 2>/dev/null | md5sum', 300000)).output;
    if (!sum.includes(images.sataMd5)) fail(`md5sum of /dev/sda (ahci) in L2 is "${sum.trim()}", the image's is ${images.sataMd5}`);
    else found.push(`sda (ahci, ${SATA_DISK.sizeMiB} MiB): dd matches the image`);
    marker = `PORTHOLE-AHCI-WROTE-${crypto.randomBytes(6).toString('hex')}`;
    const w = await con.run(`printf '%s' ${marker} > /tmp/smarker && dd if=/tmp/smarker of=/dev/sda bs=512 seek=${WRITE_SECTOR} conv=sync,fsync 2>&1 && sync`, 120000);
    if (w.status !== 0) {
      fail(`writing sector ${WRITE_SECTOR} of /dev/sda failed: ${w.output}`);
      marker = '';
    }
  }
  if (!sr0 || Number(sr0[1]) !== CD_IMAGE.sizeMiB * 2048) fail(`sr0 is ${sr0?.[0] ?? 'missing'}, expected ${CD_IMAGE.sizeMiB * 2048} 512-byte sectors`);
  else {
    const sum = (await con.run('dd if=/dev/sr0 bs=2048 2>/dev/null | md5sum', 300000)).output;
    if (!sum.includes(images.isoMd5)) fail(`md5sum of /dev/sr0 in L2 is "${sum.trim()}", the ISO's is ${images.isoMd5}`);
    else {
      found.push(`sr0 (ATAPI CD-ROM, ${CD_IMAGE.sizeMiB} MiB): dd matches the ISO`);
      await discChangeChecks(ctx, con, images, fail, found);
    }
  }
  const errors = await con.run('dmesg | grep -iE "ata[0-9]|ahci|sr0|sda|cdrom" | tail -40');
  ctx.log(`L2 dmesg (ahci lines):\n${errors.output}`);
  return marker;
}

/** `porthole cdrom MONITOR ARGS…` in L1: its exit status and output. */
function cdrom(ctx: ScenarioContext, args: string[]): { ok: boolean; output: string } {
  const r = spawnSync(process.execPath, [`${l1ProjectDir}/bin/porthole`, 'cdrom', MONITOR_SOCKET, ...args], { encoding: 'utf8', timeout: 60000 });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  ctx.log(`porthole cdrom ${args.join(' ')}: ${r.status === 0 ? 'ok' : `exit ${r.status ?? r.signal}`}: ${output}`);
  return { ok: r.status === 0, output };
}

/**
 * A disc change while L2 runs, with Linux's sr_mod and cdrom layer as the client: while L2's
 * shell holds sr0 open, sr_mod has the tray locked (PREVENT ALLOW MEDIUM REMOVAL), so the host's
 * eject is refused with the reason; once closed, the eject goes through and opening sr0 in L2
 * fails with no medium; after the second ISO goes in, L2 sees its size (after the media-change
 * unit attention, READ CAPACITY again) and reads its bytes.
 */
async function discChangeChecks(ctx: ScenarioContext, con: SerialConsole, images: Images, fail: (why: string) => void, found: string[]): Promise<void> {
  const held = await con.run('exec 3</dev/sr0 && echo HELD');
  if (!/^HELD$/m.test(held.output)) {
    fail(`L2 could not hold /dev/sr0 open: ${held.output}`);
    return;
  }
  const refused = cdrom(ctx, ['eject', '--drive', 'cd']);
  const listed = cdrom(ctx, ['list']);
  await con.run('exec 3<&-');
  if (refused.ok) fail(`porthole cdrom eject went through while L2 held sr0 open (sr_mod locks the tray): ${refused.output}`);
  else if (!/locked cd \(PREVENT ALLOW MEDIUM REMOVAL\)/.test(refused.output)) fail(`the refused eject did not say the guest locked the drive: ${refused.output}`);
  else found.push('sr0 held open in L2: the host\'s eject refused (the guest locked the tray)');
  if (!listed.ok) fail(`porthole cdrom list failed: ${listed.output}`);

  const ejected = cdrom(ctx, ['eject', '--drive', 'cd']);
  if (!ejected.ok) {
    fail(`porthole cdrom eject failed after L2 closed sr0: ${ejected.output}`);
    return;
  }
  const empty = await con.run('dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>&1');
  if (empty.status === 0 || !/No medium found/i.test(empty.output)) fail(`after the eject, reading /dev/sr0 in L2 gave status ${empty.status}: ${empty.output.trim()} (expected "No medium found")`);
  else found.push('eject: L2 finds no medium in sr0');

  const inserted = cdrom(ctx, ['insert', images.iso2, '--drive', 'cd']);
  if (!inserted.ok) {
    fail(`porthole cdrom insert ${images.iso2} failed: ${inserted.output}`);
    return;
  }
  const sum = (await con.run('dd if=/dev/sr0 bs=2048 2>/dev/null | md5sum; echo "size $(cat /sys/block/sr0/size)"', 300000)).output;
  const size = Number(/^size (\d+)$/m.exec(sum)?.[1]);
  if (!sum.includes(images.iso2Md5)) fail(`after inserting ${images.iso2}, md5sum of /dev/sr0 in L2 is "${sum.trim()}", the ISO's is ${images.iso2Md5}`);
  else if (size !== CD_IMAGE_2.sizeMiB * 2048) fail(`after the disc change L2's sr0 has ${size} sectors, expected ${CD_IMAGE_2.sizeMiB * 2048}`);
  else found.push(`disc change: L2 reads the second ISO (${CD_IMAGE_2.sizeMiB} MiB) through sr0`);
}
