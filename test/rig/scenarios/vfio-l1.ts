// VFIO with L1 as the host, through Porthole's own code: the NVMe's SR-IOV VFs made with
// pci-binding (sriov_numvfs) and listed by the inventory; VF1 (first taken by Linux's nvme) bound
// to vfio-pci through pci-binding; container, group and device opened through native/vfio.ts;
// config space and BAR0 read (pread and mmap); a DMA buffer mapped in the IOMMU and the VF's
// controller made to write its Identify data into it (checked against the serial Linux's nvme
// read); MSI-X eventfds set and cleared; the VF reset; then given back to nvme. The e1000's INTx
// eventfd with its unmask eventfd. Last, a holder SIGKILLed with VF1 on vfio-pci, repaired from
// the journal as a manager start does.
import fs from 'node:fs';
import path from 'node:path';
import { libc, vfio } from '../../../native';
import { givePciDeviceBack, setSriovVfs, takePciDevice } from '../../../main/host/pci-binding';
import { formatPciDevices, listPciDevices, pciSummary, readPciDevice } from '../../../main/host/pci-inventory';
import { repairUsbJournal, UsbJournal } from '../../../main/host/usb-journal';
import { onlineNvmeVf } from '../l1-nvme';
import { readTrim, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { type ScenarioContext, scenario } from '../scenario';

const DATA_DIR = '/tmp/vfio-l1-data';
const hex = (n: number | bigint) => `0x${n.toString(16)}`;

function driverOf(address: string): string | null {
  try { return path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${address}/driver`)); } catch { return null; }
}

/** The nvme controller node under a PCI function once the nvme driver has it (and its state is live). */
function nvmeController(address: string): { ctrl: string } | null {
  try {
    const ctrl = fs.readdirSync(`/sys/bus/pci/devices/${address}/nvme`)[0];
    if (ctrl === undefined) return null;
    return readTrim(`/sys/bus/pci/devices/${address}/nvme/${ctrl}/state`) === 'live' ? { ctrl } : null;
  } catch {
    return null;
  }
}

/** The serial Linux's nvme driver reads with Identify (nvme-cli; the VF's sysfs serial attribute reads "(efault)" on this kernel). */
function identifySerial(ctx: ScenarioContext, ctrl: string): string {
  const out = ctx.exec('nvme', ['id-ctrl', `/dev/${ctrl}`, '-o', 'json']);
  const sn = (JSON.parse(out) as { sn?: string }).sn;
  if (typeof sn !== 'string') throw new Error(`nvme id-ctrl /dev/${ctrl} gave no serial: ${out.slice(0, 200)}`);
  return sn.trim();
}

const BAR0 = vfio.VFIO_PCI_REGION.BAR0;

function r32(dev: vfio.VfioDevice, off: number): number {
  const b = Buffer.alloc(4);
  dev.readRegion(BAR0, off, b);
  return b.readUInt32LE(0);
}

function w32(dev: vfio.VfioDevice, off: number, v: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  dev.writeRegion(BAR0, off, b);
}

async function waitFor(what: string, ms: number, probe: () => boolean): Promise<void> {
  await until(what, ms, () => (probe() ? true : null));
}

/**
 * Has the controller behind `dev` DMA its Identify Controller data into `buf` (mapped at `iova`):
 * an admin queue pair in the buffer's first two pages, the data in the third. Returns the data;
 * the controller stays enabled (the reset that follows must turn it off).
 */
async function identifyThroughDma(ctx: ScenarioContext, dev: vfio.VfioDevice, buf: bigint, iova: bigint): Promise<Buffer> {
  const cap = BigInt(r32(dev, 0)) | (BigInt(r32(dev, 4)) << 32n);
  const dstrd = Number((cap >> 32n) & 0xfn);
  w32(dev, 0x14, 0); // CC.EN = 0
  await waitFor('the VF controller to stop (CSTS.RDY = 0)', 20000, () => (r32(dev, 0x1c) & 1) === 0);
  libc.copyToAddress(buf, Buffer.alloc(3 * 4096));
  const sqe = Buffer.alloc(64);
  sqe.writeUInt32LE(0x06 | (1 << 16), 0); // Identify, command id 1
  sqe.writeBigUInt64LE(iova + 0x2000n, 24); // PRP1: the data page
  sqe.writeUInt32LE(1, 40); // CNS 1: the controller
  libc.copyToAddress(buf, sqe);
  w32(dev, 0x24, (1 << 16) | 1); // AQA: 2-entry admin queues
  w32(dev, 0x28, Number(iova & 0xffffffffn)); w32(dev, 0x2c, Number(iova >> 32n));
  w32(dev, 0x30, Number((iova + 0x1000n) & 0xffffffffn)); w32(dev, 0x34, Number((iova + 0x1000n) >> 32n));
  w32(dev, 0x14, 1 | (6 << 16) | (4 << 20)); // EN, 64-byte SQEs, 16-byte CQEs
  await waitFor('the VF controller to be ready (CSTS.RDY = 1)', 20000, () => {
    const csts = r32(dev, 0x1c);
    if (csts & 2) throw new Error(`the VF controller reports a fatal status (CSTS ${hex(csts)})`);
    return (csts & 1) === 1;
  });
  w32(dev, 0x1000, 1); // admin SQ tail doorbell
  const cqe = Buffer.alloc(16);
  await waitFor('the Identify completion in the DMA buffer', 10000, () => {
    libc.copyFromAddress(cqe, buf + 0x1000n);
    return (cqe.readUInt32LE(12) & 0x10000) !== 0;
  });
  const status = cqe.readUInt32LE(12) >>> 17;
  if (status !== 0 || (cqe.readUInt32LE(12) & 0xffff) !== 1) throw new Error(`Identify completed with status ${hex(status)} (CQE ${cqe.toString('hex')})`);
  w32(dev, 0x1000 + (4 << dstrd), 1); // admin CQ head doorbell
  const data = Buffer.alloc(4096);
  libc.copyFromAddress(data, buf + 0x2000n);
  ctx.log(`Identify through DMA: CAP ${hex(cap)}, CQE ${cqe.toString('hex')}`);
  return data;
}

async function checkAssignedVf(ctx: ScenarioContext, vf: string, group: number, linuxSerial: string): Promise<string> {
  const h = vfio.openVfioPciDevice(group, vf);
  const found: string[] = [];
  try {
    const { container, device } = h;
    ctx.log(`container: type ${h.iommuType === vfio.VFIO_EXTENSION.TYPE1v2_IOMMU ? 'type1v2' : 'type1'}, group ${group} viable`);
    const info = device.info();
    ctx.log(`device ${vf}: flags ${hex(info.flags)}, ${info.numRegions} regions, ${info.numIrqs} IRQ indexes`);
    if (!info.isPci || info.numRegions < 9) throw new Error(`${vf} is not a vfio-pci device (flags ${hex(info.flags)}, ${info.numRegions} regions)`);

    // Config space: vfio-pci shows a VF's IDs (the VF's own read 0xffff) and the class.
    const inv = readPciDevice(vf)!;
    const ids = device.readConfig(0, 4);
    const cls = device.readConfig(8, 4) >>> 8;
    ctx.log(`config: ${hex(ids)} class ${hex(cls)}, command ${hex(device.readConfig(4, 2))}`);
    if ((ids & 0xffff) !== inv.vendorId || ids >>> 16 !== inv.deviceId || cls !== inv.classCode) {
      throw new Error(`config space says ${hex(ids)} class ${hex(cls)}, sysfs ${hex(inv.vendorId)}:${hex(inv.deviceId)} class ${hex(inv.classCode)}`);
    }
    found.push(`config space ${hex(ids & 0xffff)}:${hex(ids >>> 16)} class ${hex(cls)}`);

    // After a function reset the VF's memory decoding and bus mastering are off: turn them on.
    device.reset();
    device.writeConfig(4, 2, device.readConfig(4, 2) | 0x6);
    const bar0 = device.regionInfo(BAR0);
    ctx.log(`BAR0: ${hex(bar0.size)} bytes at fd offset ${hex(bar0.offset)}, flags ${hex(bar0.flags)}, sparse ${JSON.stringify(bar0.sparseMmap)}, MSI-X mappable ${bar0.msixMappable}`);
    if (bar0.size < 0x2000 || !bar0.readable || !bar0.writable) throw new Error(`BAR0 of ${vf} is ${hex(bar0.size)} bytes, flags ${hex(bar0.flags)}`);
    const vs = r32(device, 8);
    if (vs >>> 16 !== 1) throw new Error(`BAR0's NVMe version register reads ${hex(vs)}`);
    let mmapNote = 'not mmap-able';
    if (bar0.mmappable) {
      const area = bar0.sparseMmap?.find((a) => a.offset === 0) ?? (bar0.sparseMmap === null ? { offset: 0, size: bar0.size } : null);
      if (area) {
        const map = device.mapRegion(BAR0, 0, Math.min(area.size, 0x1000));
        try {
          const b = Buffer.alloc(4);
          libc.copyFromAddress(b, map.address + 8n);
          if (b.readUInt32LE(0) !== vs) throw new Error(`BAR0 through mmap reads VS ${hex(b.readUInt32LE(0))}, through pread ${hex(vs)}`);
          mmapNote = `mmap'd, VS ${hex(vs)} read through it`;
        } finally {
          map.unmap();
        }
      }
    }
    found.push(`BAR0 ${hex(bar0.size)} bytes (NVMe ${vs >>> 16}.${(vs >>> 8) & 0xff}, ${mmapNote})`);

    // IRQs: MSI-X vectors on eventfds. They stay on through Identify (its completion must
    // arrive on vector 0's eventfd; with MSI-X off the VF would have no interrupt at all).
    const msix = device.irqInfo(vfio.VFIO_PCI_IRQ.MSIX);
    const intx = device.irqInfo(vfio.VFIO_PCI_IRQ.INTX);
    ctx.log(`IRQs: MSI-X ${msix.count} (flags ${hex(msix.flags)}), INTx ${intx.count}`);
    if (msix.count < 1 || !msix.eventfd) throw new Error(`${vf} offers ${msix.count} MSI-X vectors (flags ${hex(msix.flags)})`);
    const efds = Array.from({ length: Math.min(2, msix.count) }, () => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK));
    try {
      device.enableIrqEventfds(vfio.VFIO_PCI_IRQ.MSIX, efds);
      const msixCtl = (() => {
        let p = device.readConfig(0x34, 1);
        for (let n = 0; p !== 0 && n < 48; n++) {
          if (device.readConfig(p, 1) === 0x11) return device.readConfig(p + 2, 2);
          p = device.readConfig(p + 1, 1);
        }
        return null;
      })();
      if (msixCtl === null || !(msixCtl & 0x8000)) throw new Error(`MSI-X is not enabled in config space after VFIO_DEVICE_SET_IRQS (control ${msixCtl === null ? 'not found' : hex(msixCtl)})`);
      found.push(`MSI-X: ${efds.length} of ${msix.count} vectors on eventfds (control ${hex(msixCtl)})`);

      // DMA: three pages mapped at an IOVA; the controller writes Identify data there.
      const iommu = container.iommuInfo();
      const size = 3 * 4096;
      const buf = libc.mmap(0n, size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS, -1, 0);
      const iova = 0x10000000n;
      try {
        container.mapDma({ iova, vaddr: buf, size });
        try {
          const id = await identifyThroughDma(ctx, device, buf, iova);
          const serial = id.toString('latin1', 4, 24).trim();
          const model = id.toString('latin1', 24, 64).trim();
          ctx.log(`Identify: VID ${hex(id.readUInt16LE(0))}, serial "${serial}", model "${model}"; Linux's nvme read serial "${linuxSerial}"`);
          if (serial !== linuxSerial) throw new Error(`the Identify data the VF wrote by DMA has serial "${serial}", Linux's nvme read "${linuxSerial}"`);
          found.push(`a ${size}-byte DMA buffer mapped at IOVA ${hex(iova)} (IOMMU page sizes ${hex(iommu.pageSizes)}) got the VF's Identify data by DMA (serial ${serial})`);
          let interrupts = 0;
          await until('the Identify completion\'s MSI-X interrupt on the eventfd', 5000, () => {
            interrupts += libc.eventfdRead(efds[0]);
            return interrupts > 0 ? true : null;
          });
          found.push(`its completion interrupt arrived on MSI-X vector 0's eventfd (${interrupts})`);
        } finally {
          const unmapped = container.unmapDma(iova, size);
          if (unmapped !== size) throw new Error(`VFIO_IOMMU_UNMAP_DMA unmapped ${unmapped} of ${size} bytes`);
        }
      } finally {
        libc.munmap(buf, size);
      }
    } finally {
      device.disableIrqs(vfio.VFIO_PCI_IRQ.MSIX);
      efds.forEach((fd) => libc.close(fd));
    }
    // The controller is still enabled from Identify: the reset must turn it off.
    const before = { cc: r32(device, 0x14), csts: r32(device, 0x1c) };
    device.reset();
    device.writeConfig(4, 2, device.readConfig(4, 2) | 0x2);
    const after = { cc: r32(device, 0x14), csts: r32(device, 0x1c) };
    ctx.log(`reset: CC ${hex(before.cc)} CSTS ${hex(before.csts)} before, CC ${hex(after.cc)} CSTS ${hex(after.csts)} after`);
    if (!(before.cc & 1) || (after.cc & 1) || (after.csts & 1)) throw new Error(`VFIO_DEVICE_RESET did not reset the controller: CC ${hex(before.cc)} -> ${hex(after.cc)}, CSTS ${hex(before.csts)} -> ${hex(after.csts)}`);
    found.push(`VFIO_DEVICE_RESET took the enabled controller back to CC ${hex(after.cc)}`);
  } finally {
    h.close();
  }
  return found.join(', ');
}

async function checkIntx(ctx: ScenarioContext, journal: UsbJournal): Promise<string> {
  const nic = listPciDevices().find((d) => d.vendorId === 0x8086 && d.deviceId === 0x100e);
  if (!nic) throw new Error('no e1000 (8086:100e) in L1');
  const taken = takePciDevice(nic.address, { journal, vm: 'vfio-l1', force: nic.hostNeeds !== null });
  try {
    const h = vfio.openVfioPciDevice(taken.iommuGroup, nic.address);
    try {
      const intx = h.device.irqInfo(vfio.VFIO_PCI_IRQ.INTX);
      if (intx.count !== 1 || !intx.automasked) throw new Error(`e1000 INTx: count ${intx.count}, flags ${hex(intx.flags)}`);
      const trigger = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      const unmask = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      try {
        h.device.enableIrqEventfds(vfio.VFIO_PCI_IRQ.INTX, [trigger]);
        h.device.setIntxUnmaskEventfd(unmask);
        h.device.maskIntx();
        h.device.unmaskIntx();
        libc.eventfdWrite(unmask); // what KVM's resample does after the guest's EOI
        h.device.disableIrqs(vfio.VFIO_PCI_IRQ.INTX);
      } finally {
        libc.close(trigger);
        libc.close(unmask);
      }
    } finally {
      h.close();
    }
  } finally {
    const back = givePciDeviceBack(taken, { journal });
    if (back !== 'e1000') throw new Error(`the e1000 went back to ${back}, not e1000`);
  }
  ctx.log(`e1000 ${nic.address}: INTx eventfd, unmask eventfd, mask/unmask set and cleared; back on e1000`);
  return `e1000 ${nic.address} INTx on an eventfd with its unmask (resample) eventfd, then back on e1000`;
}

async function checkKillRepair(ctx: ScenarioContext, vf: string): Promise<string> {
  const dir = path.join(DATA_DIR, 'killed');
  const child = ctx.spawn(process.execPath, ['-e', `
    const b = require('${l1ProjectDir}/dist/main/host/pci-binding.js');
    const j = require('${l1ProjectDir}/dist/main/host/usb-journal.js');
    const v = require('${l1ProjectDir}/dist/native/vfio.js');
    const t = b.takePciDevice(process.argv[2], { journal: new j.UsbJournal(process.argv[1]), vm: 'doomed' });
    const h = v.openVfioPciDevice(t.iommuGroup, t.address);
    h.device.reset();
    console.log('HELD ' + process.pid);
    setInterval(() => {}, 1000);`, dir, vf], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  await until('the holder process to take the VF', 30000, () => {
    if (child.exitCode !== null) throw new Error(`the holder process ended (${child.exitCode}): ${out}`);
    return out.includes('HELD') ? true : null;
  });
  const journal = new UsbJournal(dir);
  const entry = journal.read().pci.find((e) => e.address === vf);
  if (!entry || entry.pid !== child.pid || entry.driver !== 'nvme') throw new Error(`the journal does not hold ${vf} for process ${child.pid}: ${JSON.stringify(journal.read())}`);
  child.kill('SIGKILL');
  await until('the holder process to die', 10000, () => (child.exitCode !== null || child.signalCode !== null ? true : null));
  const orphan = driverOf(vf);
  ctx.log(`after SIGKILL of process ${child.pid}, ${vf} is on ${orphan}`);
  if (orphan !== 'vfio-pci') throw new Error(`after the SIGKILL ${vf} is on ${orphan}, not left on vfio-pci`);
  const lines = repairUsbJournal(journal);
  for (const l of lines) ctx.log(`repair: ${l}`);
  if (!lines.some((l) => l.startsWith(`PCI: gave ${vf} back to nvme`))) throw new Error(`the repair did not give ${vf} back: ${lines.join('; ')}`);
  const ctrl = await until(`nvme to bring ${vf}'s controller up again after the repair`, 60000, () => nvmeController(vf));
  if (journal.read().pci.length !== 0) throw new Error('the journal entry is still there after the repair');
  return `SIGKILL of the holder left ${vf} on vfio-pci; the journal repair gave it back to nvme (/dev/${ctrl.ctrl})`;
}

scenario('vfio-l1', async (ctx) => {
  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  const journal = new UsbJournal(DATA_DIR);
  const pf = listPciDevices().find((d) => d.classCode >>> 8 === 0x0108 && d.sriov !== null);
  if (!pf) throw new Error('no NVMe controller with SR-IOV in L1');
  const pfCtrl = await until('the NVMe PF\'s controller', 30000, () => nvmeController(pf.address));
  const vfs = setSriovVfs(pf.address, 2, { autoprobe: false });
  ctx.log(`PF ${pf.address} (/dev/${pfCtrl.ctrl}): VFs ${vfs.join(', ')}`);
  const [vf1, vf2] = vfs;
  onlineNvmeVf(ctx, pfCtrl.ctrl, vf1, 1);
  // With autoprobe off a VF binds only to the driver its driver_override names.
  fs.writeFileSync(`/sys/bus/pci/devices/${vf1}/driver_override`, 'nvme');
  fs.writeFileSync('/sys/bus/pci/drivers/nvme/bind', vf1);
  const vfCtrl = await until(`nvme to bring VF ${vf1} up`, 60000, () => nvmeController(vf1));
  const linux = { ctrl: vfCtrl.ctrl, serial: identifySerial(ctx, vfCtrl.ctrl) };
  ctx.log(`VF1 ${vf1} on nvme as /dev/${linux.ctrl}, serial ${linux.serial} (nvme id-ctrl)`);

  const list = listPciDevices().map((d) => pciSummary(d, null));
  ctx.log(`porthole pci:\n${formatPciDevices(list)}`);
  const listed = vfs.map((a) => list.find((d) => d.address === a));
  if (listed.some((d) => d === undefined || d.physicalFunction !== pf.address || d.iommuGroup === null)) {
    throw new Error(`the inventory does not list both VFs under ${pf.address} with IOMMU groups: ${JSON.stringify(listed)}`);
  }
  const pfNow = list.find((d) => d.address === pf.address)!;
  if (pfNow.sriov?.numVfs !== 2) throw new Error(`the inventory shows ${pfNow.sriov?.numVfs} VFs on the PF`);
  if (!listed[0]!.assignable) throw new Error(`VF1 is not assignable: ${listed[0]!.whyNot}`);
  const found = [`2 VFs (${vf1}, ${vf2}) made on ${pf.address} and listed with IOMMU groups ${listed[0]!.iommuGroup!.id} and ${listed[1]!.iommuGroup!.id}`];

  const taken = takePciDevice(vf1, { journal, vm: 'vfio-l1' });
  if (driverOf(vf1) !== 'vfio-pci' || journal.read().pci[0]?.driver !== 'nvme') throw new Error(`${vf1} is on ${driverOf(vf1)} after taking it`);
  found.push(`VF1 taken from nvme to vfio-pci (journaled)`);
  found.push(await checkAssignedVf(ctx, vf1, taken.iommuGroup, linux.serial));
  const back = givePciDeviceBack(taken, { journal });
  if (back !== 'nvme') throw new Error(`${vf1} went back to ${back}, not nvme`);
  const again = await until(`nvme to bring ${vf1}'s controller up again`, 60000, () => nvmeController(vf1));
  if (journal.read().pci.length !== 0) throw new Error('the journal entry is still there after giving VF1 back');
  found.push(`VF1 back on nvme (/dev/${again.ctrl})`);

  found.push(await checkIntx(ctx, journal));
  found.push(await checkKillRepair(ctx, vf1));
  return found.join('; ');
});
