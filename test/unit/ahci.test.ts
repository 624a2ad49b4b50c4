// The AHCI HBA, its ATA disk and ATAPI CD-ROM at register level, driven from the host side as
// SeaBIOS and Linux's ahci/libata drive them: identity and registers, signatures, IDENTIFY,
// DMA and NCQ reads and writes against the image, flushes, the error paths (task file, host bus
// and interface fatal errors, and SeaBIOS's recovery), interrupts, and the CD-ROM's media
// change (unit attention, GET EVENT STATUS NOTIFICATION, eject and the removal lock).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ATA_CMD } from '../../main/vmm/devices/ahci/ata';
import { AtaDisk } from '../../main/vmm/devices/ahci/ata-disk';
import { AtapiCdrom } from '../../main/vmm/devices/ahci/atapi-cdrom';
import { AHCI_ABAR, AhciHba, HBA_REG, PORT_REG, PXCMD, PXIS } from '../../main/vmm/devices/ahci/hba';
import { MsiCapability, PCI_CAP_ID, PCI_CFG, PCI_COMMAND } from '../../main/vmm/devices/pci/pci-device';
import { AhciTestDriver, h2d, MemoryDisk, portLayout } from '../helpers/ahci-driver';

const DISK_BYTES = 1024 * 512;
const ISO_BYTES = 64 * 2048;

function machine(options: { cdromMedium?: boolean; readOnly?: boolean; vectored?: boolean } = {}) {
  const image = new MemoryDisk(DISK_BYTES, options.readOnly ?? false, undefined, options.vectored ?? false);
  const iso = new MemoryDisk(ISO_BYTES, true, (i) => (i >> 11) ^ (i & 0xff));
  const disk = new AtaDisk({ name: 'disk0', backend: image, serial: 'SATA-1' });
  const cdrom = new AtapiCdrom({ name: 'disk1', medium: options.cdromMedium === false ? null : iso });
  const hba = new AhciHba('ahci', [disk, cdrom]);
  const d = new AhciTestDriver(hba);
  return { image, iso, disk, cdrom, hba, d };
}

const words = (data: Uint8Array, at: number) => data[2 * at] | (data[2 * at + 1] << 8);
const ataString = (data: Uint8Array, at: number, n: number) => {
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(data[2 * (at + i) + 1], data[2 * (at + i)]);
  return s.trim();
};

test('identity: ICH9 AHCI (8086:2922, class 01/06/01), ABAR in BAR 5, MSI; CAP, PI, VS; ports show their devices', () => {
  const { hba, d } = machine();
  assert.equal(hba.readConfig(PCI_CFG.VENDOR_ID, 2), 0x8086);
  assert.equal(hba.readConfig(PCI_CFG.DEVICE_ID, 2), 0x2922);
  assert.equal(hba.readConfig(PCI_CFG.CLASS_PROG, 1), 0x01);
  assert.equal(hba.readConfig(PCI_CFG.CLASS_PROG + 1, 2), 0x0106);
  assert.equal(hba.barSpec(AHCI_ABAR)?.size, 0x1000);
  assert.ok(hba.findCapability(PCI_CAP_ID.MSI) >= 0x40);
  assert.ok(hba.msi instanceof MsiCapability);
  const cap = d.hostRead(HBA_REG.CAP);
  assert.equal(cap & 0x1f, 5, 'six ports');
  assert.equal((cap >> 8) & 0x1f, 31, '32 command slots');
  assert.ok(cap & (1 << 30), 'NCQ');
  assert.ok(cap & (1 << 31), '64-bit addressing');
  assert.equal(d.hostRead(HBA_REG.PI), 0x3f);
  assert.equal(d.hostRead(HBA_REG.VS), 0x10000);
  assert.ok(d.hostRead(HBA_REG.GHC) & 0x80000000, 'AHCI enabled (AHCI only)');
  assert.equal(d.portRead(0, PORT_REG.SSTS), 0x113);
  assert.equal(d.portRead(0, PORT_REG.SIG), 0x101);
  assert.equal(d.portRead(1, PORT_REG.SIG), 0xeb140101);
  assert.equal(d.portRead(2, PORT_REG.SSTS) & 0xf, 0, 'an empty port has no device');
  assert.equal(d.portRead(0, PORT_REG.TFD) & 0x88, 0, 'not busy');
});

test('setting FIS receive posts the signature D2H FIS; a COMRESET (PxSCTL.DET 1 then 0) posts it again', () => {
  const { d } = machine();
  d.startPort(1);
  const fis = d.d2h(1);
  assert.equal(fis[0], 0x34);
  assert.deepEqual([fis[12], fis[4], fis[5], fis[6]], [0x01, 0x01, 0x14, 0xeb]);
  d.bus.ram.fill(0, portLayout(1).fb + 0x40, portLayout(1).fb + 0x60);
  d.portWrite(1, PORT_REG.SCTL, 0x301);
  assert.equal(d.portRead(1, PORT_REG.SSTS) & 0xf, 1, 'link down during COMRESET');
  assert.ok(d.portRead(1, PORT_REG.TFD) & 0x80, 'busy during COMRESET');
  d.portWrite(1, PORT_REG.SCTL, 0x300);
  assert.equal(d.portRead(1, PORT_REG.SSTS), 0x113);
  assert.equal(d.d2h(1)[0], 0x34);
  assert.equal(d.portRead(1, PORT_REG.SIG), 0xeb140101);
});

test('SeaBIOS\'s probe: IDENTIFY PACKET DEVICE on the disk fails (TFES, ABRT), recovery, IDENTIFY DEVICE answers with PIO Setup', () => {
  const { d } = machine();
  d.startPort(0);
  d.portWrite(0, PORT_REG.SACT, 1); // SeaBIOS writes it before every command
  let is = d.run(0, { fis: h2d(ATA_CMD.IDENTIFY_PACKET_DEVICE, 0, 0, 0, 0), bytes: 512 });
  assert.ok(is & PXIS.TFES && is & PXIS.DHRS);
  assert.equal(d.d2h(0)[2] & 1, 1, 'ERR');
  assert.equal(d.d2h(0)[3], 0x04, 'ABRT');
  assert.equal(d.portRead(0, PORT_REG.CI), 1, 'the failed slot stays issued until software stops the port');
  d.run(0, { fis: h2d(ATA_CMD.IDENTIFY_DEVICE), bytes: 512 });
  assert.equal(d.portRead(0, PORT_REG.CI), 1, 'a halted port takes no command');
  d.recover(0);
  assert.equal(d.portRead(0, PORT_REG.CI), 0);
  assert.equal(d.portRead(0, PORT_REG.CMD) & PXCMD.CR, PXCMD.CR);
  is = d.run(0, { fis: h2d(ATA_CMD.IDENTIFY_DEVICE, 0, 0, 0, 0), bytes: 512 });
  assert.ok(is & PXIS.PSS && is & PXIS.DHRS, `PxIS ${is.toString(16)}`);
  assert.equal(d.pioSetup(0)[2], 0x50, 'SeaBIOS reads the status from the PIO Setup FIS');
  assert.equal(d.pioSetup(0)[15], 0x50, 'E_Status');
  const id = d.data(0, 512);
  assert.equal(words(id, 0), 0x0040);
  assert.equal(words(id, 100) + words(id, 101) * 65536, 1024, 'LBA48 sectors');
  assert.equal(words(id, 60) + words(id, 61) * 65536, 1024);
  assert.ok(words(id, 83) & (1 << 10), 'LBA48');
  assert.ok(words(id, 76) & (1 << 8), 'NCQ');
  assert.equal(words(id, 75), 31);
  assert.equal(ataString(id, 10, 10), 'SATA-1');
  assert.equal(ataString(id, 27, 20), 'Porthole SATA disk');
  assert.equal(id[510], 0xa5);
  assert.equal(id.reduce((a, b) => a + b, 0) & 0xff, 0, 'checksum');
  assert.equal(d.prdbc(0), 512);
  assert.equal(d.portRead(0, PORT_REG.CI), 0);
});

for (const vectored of [false, true]) test(`READ DMA EXT and WRITE DMA EXT move the image's bytes through a scattered PRD table; 28-bit READ DMA too (${vectored ? 'straight to and from guest memory' : 'copied'})`, () => {
  const { d, image } = machine({ vectored });
  d.startPort(0);
  const base = portLayout(0).data;
  const prds = [{ address: base, length: 1000 }, { address: base + 0x4000, length: 24 }, { address: base + 0x6000, length: 1024 }];
  let is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 10, 4), prds });
  assert.ok(is & PXIS.DHRS && !(is & PXIS.TFES));
  assert.deepEqual(d.bus.ram.slice(base, base + 1000), image.bytes.slice(5120, 6120));
  assert.deepEqual(d.bus.ram.slice(base + 0x4000, base + 0x4018), image.bytes.slice(6120, 6144));
  assert.deepEqual(d.bus.ram.slice(base + 0x6000, base + 0x6400), image.bytes.slice(6144, 7168));
  assert.equal(d.prdbc(0), 2048);
  assert.equal(d.d2h(0)[2], 0x50);
  d.bus.ram.fill(0xab, base, base + 1024);
  is = d.run(0, { fis: h2d(ATA_CMD.WRITE_DMA_EXT, 1000, 2), write: true, bytes: 1024, slot: 3 });
  assert.ok(!(is & PXIS.TFES));
  // slot 3's data area
  assert.deepEqual(image.bytes.slice(1000 * 512, 1002 * 512), d.data(0, 1024, 3));
  is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA, 0x00234, 1, 0, 0x40), bytes: 512 });
  assert.deepEqual(d.data(0, 512), image.bytes.slice(0x234 * 512, 0x235 * 512));
  is = d.run(0, { fis: h2d(ATA_CMD.FLUSH_CACHE_EXT) });
  assert.equal(image.flushes, 1);
  assert.deepEqual(image.violations, []);
  assert.equal(image.vectoredTransfers, vectored ? 3 : 0);
});

test('a range past the end is IDNF, a PRD table too small is ABRT; neither reaches the image', () => {
  const { d, image } = machine();
  d.startPort(0);
  let is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 1023, 2), bytes: 1024 });
  assert.ok(is & PXIS.TFES);
  assert.equal(d.d2h(0)[3] & 0x10, 0x10, 'IDNF');
  d.recover(0);
  is = d.run(0, { fis: h2d(ATA_CMD.WRITE_DMA_EXT, 0, 8), write: true, bytes: 512 });
  assert.ok(is & PXIS.TFES);
  assert.equal(d.d2h(0)[3], 0x04);
  d.recover(0);
  is = d.run(0, { fis: h2d(ATA_CMD.WRITE_DMA_EXT, 2 ** 40, 1), write: true, bytes: 512 });
  assert.ok(is & PXIS.TFES);
  assert.deepEqual(image.violations, []);
});

test('a read-only disk aborts writes', () => {
  const { d, image } = machine({ readOnly: true });
  d.startPort(0);
  const before = image.bytes.slice();
  const is = d.run(0, { fis: h2d(ATA_CMD.WRITE_DMA_EXT, 0, 1), write: true, bytes: 512 });
  assert.ok(is & PXIS.TFES);
  assert.deepEqual(image.bytes, before);
});

test('NCQ: READ and WRITE FPDMA QUEUED clear PxCI at once and PxSACT with a Set Device Bits FIS', () => {
  const { d, image } = machine();
  d.startPort(0);
  d.portWrite(0, PORT_REG.SACT, 0b110);
  d.prepare(0, { fis: h2d(ATA_CMD.READ_FPDMA_QUEUED, 20, 1 << 3, 2), bytes: 1024, slot: 1 });
  d.bus.ram.fill(0x5a, portLayout(0).data + 2 * 0x8000, portLayout(0).data + 2 * 0x8000 + 512);
  d.prepare(0, { fis: h2d(ATA_CMD.WRITE_FPDMA_QUEUED, 30, 2 << 3, 1), bytes: 512, slot: 2, write: true });
  d.portWrite(0, PORT_REG.CI, 0b110);
  const is = d.portRead(0, PORT_REG.IS);
  assert.ok(is & PXIS.SDBS, `PxIS ${is.toString(16)}`);
  assert.ok(!(is & PXIS.TFES));
  assert.equal(d.portRead(0, PORT_REG.CI), 0);
  assert.equal(d.portRead(0, PORT_REG.SACT), 0);
  assert.deepEqual(d.data(0, 1024, 1), image.bytes.slice(20 * 512, 22 * 512));
  assert.deepEqual(image.bytes.slice(30 * 512, 31 * 512), new Uint8Array(512).fill(0x5a));
  const sdb = d.bus.ram.slice(portLayout(0).fb + 0x58, portLayout(0).fb + 0x60);
  assert.equal(sdb[0], 0xa1);
});

for (const vectored of [false, true]) test(`a PRD outside guest memory, or bus mastering off, is a host bus fatal error and writes nothing${vectored ? ' (over an image that reads and writes guest memory directly)' : ''}`, () => {
  const { d, hba, image } = machine({ vectored });
  d.startPort(0);
  const before = image.bytes.slice();
  let is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 0, 1), prds: [{ address: 0xfffff000, length: 512 }] });
  assert.ok(is & PXIS.HBFS);
  assert.equal(d.portRead(0, PORT_REG.CI), 1);
  assert.equal((d.portRead(0, PORT_REG.CMD) >> 8) & 0x1f, 0, 'PxCMD.CCS names the slot');
  d.recover(0);
  is = d.run(0, { fis: h2d(ATA_CMD.WRITE_DMA_EXT, 0, 1), write: true, prds: [{ address: 0x1000, length: 512, high: 0x200000 }] });
  assert.ok(is & PXIS.HBFS);
  d.recover(0);
  hba.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 0, 1), bytes: 512 });
  assert.equal(is & PXIS.DHRS, 0);
  assert.ok(d.hba.ports[0].halted);
  hba.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  d.recover(0);
  is = d.run(0, { fis: [0x34, 0x80, 0xc8, 0], bytes: 512 });
  assert.ok(is & PXIS.IFS, 'a FIS that is not a Register H2D FIS');
  d.recover(0);
  is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 0, 1), bytes: 512, cfl: 1 });
  assert.ok(is & PXIS.IFS, 'a command FIS of one dword');
  d.recover(0);
  is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 0, 1), bytes: 512 });
  assert.ok(!(is & PXIS.TFES) && is & PXIS.DHRS, 'works again after recovery');
  assert.deepEqual(image.bytes, before);
});

test('interrupts: INTx A while GHC.IE and PxIE allow it and until PxIS is cleared; MSI once the guest enables it', () => {
  const { d, hba } = machine();
  d.startPort(0);
  d.run(0, { fis: h2d(ATA_CMD.FLUSH_CACHE) });
  assert.equal(d.bus.intx, false, 'nothing while PxIE and GHC.IE are clear');
  d.enableInterrupts(0, PXIS.DHRS);
  d.prepare(0, { fis: h2d(ATA_CMD.FLUSH_CACHE) });
  d.portWrite(0, PORT_REG.CI, 1);
  assert.equal(d.bus.intx, true);
  assert.equal(d.hostRead(HBA_REG.IS), 1);
  d.portWrite(0, PORT_REG.IS, PXIS.DHRS);
  assert.equal(d.bus.intx, false);
  assert.equal(d.hostRead(HBA_REG.IS), 0);
  const msi = hba.findCapability(PCI_CAP_ID.MSI);
  hba.writeConfig(msi + 4, 4, 0xfee00000);
  hba.writeConfig(msi + 12, 2, 0x41);
  hba.writeConfig(msi + 2, 2, 1);
  d.portWrite(0, PORT_REG.CI, 1);
  assert.equal(d.bus.intx, false);
  assert.deepEqual(d.bus.msis, [{ addressLo: 0xfee00000, data: 0x41 }]);
});

function atapi(d: AhciTestDriver, cdb: number[], bytes = 2048, dma = true) {
  const is = d.run(1, { fis: h2d(ATA_CMD.PACKET, 0, 0, dma ? 1 : 0, 0), cdb: [...cdb, ...new Array(16 - cdb.length).fill(0)], bytes });
  const fis = d.d2h(1);
  if (is & PXIS.TFES) d.recover(1);
  return { is, status: fis[2], error: fis[3], data: d.data(1, bytes) };
}

function requestSense(d: AhciTestDriver): [number, number] {
  const r = atapi(d, [0x03, 0, 0, 0, 18], 18);
  return [r.data[2] & 0xf, r.data[12]];
}

test('ATAPI: IDENTIFY DEVICE aborts with the signature, IDENTIFY PACKET DEVICE, INQUIRY, READ CAPACITY, READ(10/12), READ TOC', () => {
  const { d, iso } = machine();
  d.startPort(1);
  let is = d.run(1, { fis: h2d(ATA_CMD.IDENTIFY_DEVICE), bytes: 512 });
  assert.ok(is & PXIS.TFES);
  assert.deepEqual([d.d2h(1)[5], d.d2h(1)[6]], [0x14, 0xeb]);
  d.recover(1);
  is = d.run(1, { fis: h2d(ATA_CMD.IDENTIFY_PACKET_DEVICE), bytes: 512 });
  assert.ok(is & PXIS.PSS);
  const id = d.data(1, 512);
  assert.equal((words(id, 0) >> 8) & 0x1f, 5, 'CD-ROM');
  assert.equal(words(id, 0) >> 14, 2, 'ATAPI');
  assert.ok(words(id, 0) & 0x80, 'removable');
  let r = atapi(d, [0x12, 0, 0, 0, 36], 36);
  assert.equal(r.data[0], 5);
  assert.equal(String.fromCharCode(...r.data.slice(8, 16)), 'PORTHOLE');
  r = atapi(d, [0x25], 8);
  assert.equal(new DataView(r.data.buffer).getUint32(0), 63);
  assert.equal(new DataView(r.data.buffer).getUint32(4), 2048);
  r = atapi(d, [0x28, 0, 0, 0, 0, 5, 0, 0, 2], 4096);
  assert.equal(r.status, 0x50);
  assert.deepEqual(r.data, iso.bytes.slice(5 * 2048, 7 * 2048));
  r = atapi(d, [0xa8, 0, 0, 0, 0, 63, 0, 0, 0, 1], 2048);
  assert.deepEqual(r.data, iso.bytes.slice(63 * 2048));
  r = atapi(d, [0x28, 0, 0, 0, 0, 63, 0, 0, 2], 4096);
  assert.equal(r.status & 1, 1, 'past the end');
  assert.equal(r.error >> 4, 5, 'ILLEGAL REQUEST in the error register');
  assert.deepEqual(requestSense(d), [5, 0x21]);
  r = atapi(d, [0x43, 0, 0, 0, 0, 0, 0, 0, 20], 20);
  assert.equal(new DataView(r.data.buffer).getUint16(0), 18);
  assert.equal(r.data[14], 0xaa, 'lead-out');
  assert.equal(new DataView(r.data.buffer).getUint32(16), 64);
  r = atapi(d, [0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 64], 64, false);
  assert.equal(r.data[8], 0x2a);
  assert.ok(r.is & PXIS.PSS, 'PIO data in: PIO Setup FIS');
  r = atapi(d, [0x46, 0, 0, 0, 0, 0, 0, 0, 64], 64);
  assert.equal(new DataView(r.data.buffer).getUint16(6), 0x0008, 'current profile CD-ROM');
  r = atapi(d, [0xff], 0);
  assert.deepEqual(requestSense(d), [5, 0x20]);
});

test('ATAPI media: an empty drive is NOT READY (3A); insert gives UNIT ATTENTION and a new-media event; eject honours the lock', () => {
  const { d, cdrom } = machine({ cdromMedium: false });
  d.startPort(1);
  let r = atapi(d, [0x00], 0);
  assert.equal(r.error >> 4, 2);
  assert.deepEqual(requestSense(d), [2, 0x3a]);
  r = atapi(d, [0x25], 8);
  assert.equal(r.error >> 4, 2);
  const iso = new MemoryDisk(ISO_BYTES, true);
  cdrom.insert(iso);
  r = atapi(d, [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
  assert.equal(r.status, 0x50, 'GET EVENT STATUS NOTIFICATION is exempt from unit attention');
  assert.deepEqual([r.data[4], r.data[5]], [2, 2], 'new media, present');
  r = atapi(d, [0x00], 0);
  assert.equal(r.error >> 4, 6, 'UNIT ATTENTION');
  r = atapi(d, [0x00], 0);
  assert.equal(r.status, 0x50, 'then ready');
  r = atapi(d, [0x1e, 0, 0, 0, 1], 0);
  r = atapi(d, [0x1b, 0, 0, 0, 2], 0);
  assert.equal(r.error >> 4, 5, 'removal prevented');
  assert.equal(cdrom.medium, iso);
  atapi(d, [0x1e, 0, 0, 0, 0], 0);
  r = atapi(d, [0x1b, 0, 0, 0, 2], 0);
  assert.equal(r.status, 0x50);
  assert.equal(cdrom.medium, null);
  assert.ok(iso.closed);
  r = atapi(d, [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
  assert.deepEqual([r.data[4], r.data[5]], [3, 1], 'media removal, no medium, tray open');
  r = atapi(d, [0x28, 0, 0, 0, 0, 0, 0, 0, 1], 2048);
  assert.equal(r.error >> 4, 2);
  const iso2 = new MemoryDisk(ISO_BYTES, true);
  cdrom.insert(iso2);
  cdrom.eject();
  assert.ok(iso2.closed, 'the host\'s eject closes the image');
});

test('a GHC.HR reset puts the ports back; command completions from before a stop are dropped', () => {
  const { d, hba } = machine();
  d.startPort(0);
  d.hostWrite(HBA_REG.GHC, 1);
  assert.equal(d.hostRead(HBA_REG.GHC) & 1, 0);
  assert.equal(d.portRead(0, PORT_REG.CMD) & (PXCMD.ST | PXCMD.FRE), 0);
  assert.equal(d.portRead(0, PORT_REG.CLB), 0);
  assert.equal(hba.ports[0].halted, false);
});
