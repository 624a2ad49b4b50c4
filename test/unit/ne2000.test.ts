// The NE2000 PCI model (RTL8029) at register level from the host side, with the port
// sequences Linux's ne2k-pci and 8390.c use: identity, reset, PROM readout, remote DMA both
// ways, transmit to the backend (and waiting for credit), receive into the ring with the
// header and the wrap at PSTOP, a full ring (frames wait; the bare DP8390's overflow as an
// option), the address filter, interrupts, and the --nic / nics model option.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { machineConfigFromJson, parseNic } from '../../main/vmm/config';
import { PCI_CFG } from '../../main/vmm/devices/pci/pci-device';
import { ethernetCrcBe, ISR, multicastHashIndex, RCR } from '../../main/vmm/devices/net/ne2000';
import { NET_KIND } from '../../main/vmm/shared/net-messages';
import { ethFrame, MAC, Ne2000TestDriver, RX_START, RX_STOP } from '../helpers/ne2000-driver';

const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

function counters(t: Ne2000TestDriver): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of t.statistics.schema) if (c.group === 'net0') out[c.name] = t.statistics.counts[t.statistics.counter('net0', c.name)];
  return out;
}

test('PCI identity: 10ec:8029, Ethernet class, INTA, a 32-byte I/O BAR', () => {
  const { device } = new Ne2000TestDriver();
  assert.equal(device.readConfig(PCI_CFG.VENDOR_ID, 2), 0x10ec);
  assert.equal(device.readConfig(PCI_CFG.DEVICE_ID, 2), 0x8029);
  assert.equal(device.readConfig(PCI_CFG.CLASS_PROG, 1) | (device.readConfig(0x0a, 2) << 8), 0x020000);
  assert.equal(device.interruptPin, 1);
  device.writeConfig(PCI_CFG.BAR0, 4, 0xffffffff);
  assert.equal(device.readConfig(PCI_CFG.BAR0, 4), 0xffffffe1, 'I/O BAR of 0x20 bytes');
});

test('reset port: ISR.RST, CR stopped with the remote DMA aborted; CR never reads 0xff', () => {
  const t = new Ne2000TestDriver();
  t.outb(0, 0x22);
  t.outb(7, 0xff);
  assert.equal(t.inb(7) & ISR.RST, 0, 'started: RST clear');
  t.reset();
  assert.equal(t.inb(0), 0x21);
  assert.notEqual(t.inb(0), 0xff);
  assert.equal(t.inb(7) & ISR.RST, ISR.RST, 'RST is not cleared by a write of 1');
});

test('PROM readout in word mode with byte reads gives the MAC (ne2k-pci probe), and the WW signature', () => {
  const t = new Ne2000TestDriver();
  t.reset();
  // ne2k_pci_init_one's program sequence.
  for (const [v, reg] of [[0x21, 0], [0x49, 0x0e], [0, 0x0a], [0, 0x0b], [0, 0x0f], [0xff, 7], [0x20, 0x0c], [0x02, 0x0d], [32, 0x0a], [0, 0x0b], [0, 0x08], [0, 0x09], [0x0a, 0]]) t.outb(reg, v);
  const prom = Array.from({ length: 32 }, () => t.inb(0x10));
  assert.deepEqual(prom.slice(0, 6), [...MAC]);
  assert.equal(prom[14], 0x57);
  assert.equal(prom[15], 0x57);
  assert.ok(t.inb(7) & ISR.RDC, 'the 32-byte count ran out: RDC');
  // Byte mode reads the doubled bytes one by one.
  t.outb(0x0e, 0x48);
  t.outb(0x0a, 12); t.outb(0x0b, 0); t.outb(0x08, 0); t.outb(0x09, 0); t.outb(0, 0x0a);
  const bytes = Array.from({ length: 12 }, () => t.inb(0x10));
  assert.deepEqual(bytes, [...MAC].flatMap((b) => [b, b]));
});

test('remote DMA: write then read back with words, dwords and an odd tail; RDC; the count bounds it', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const data = Uint8Array.from({ length: 301 }, (_, i) => (i * 13 + 5) & 0xff);
  t.remoteWrite(0x5000, data);
  assert.ok(t.inb(7) & ISR.RDC);
  t.outb(7, ISR.RDC);
  assert.deepEqual(t.remoteRead(0x5000, 301), data);
  assert.ok(t.inb(7) & ISR.RDC);
  // Past the count the data port moves nothing.
  assert.equal(t.inw(0x10), 0xffff);
  // Outside card memory: reads are 0xff, writes vanish (no exception, nothing else changes).
  t.remoteWrite(0xfff0, Uint8Array.from({ length: 64 }, () => 0xab));
  assert.deepEqual([...t.remoteRead(0xc000, 8)], new Array(8).fill(0xff));
  assert.deepEqual(t.remoteRead(0x5000, 301), data);
  // A start with a zero count completes at once.
  t.outb(7, 0xff);
  t.outb(0x0a, 0); t.outb(0x0b, 0); t.outb(0, 0x0a);
  assert.ok(t.inb(7) & ISR.RDC);
});

test('remote DMA wraps from PSTOP to PSTART, as 8390.c reading a frame across the end relies on', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const data = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
  t.remoteWrite((RX_STOP << 8) - 32, data);
  assert.deepEqual(t.remoteRead(RX_START << 8, 32), data.subarray(32));
  assert.deepEqual(t.remoteRead((RX_STOP << 8) - 32, 64), data);
});

test('transmit: the frame in card memory goes to the backend, PTX and TSR, the interrupt follows ISR & IMR', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const frame = ethFrame(BROADCAST, 98);
  t.send(frame);
  assert.deepEqual(t.host.frames(), [frame]);
  assert.ok(t.inb(7) & ISR.PTX);
  assert.equal(t.inb(4) & 1, 1, 'TSR.PTX');
  assert.equal(t.inb(0) & 0x04, 0, 'TXP clear');
  assert.equal(t.irq, true);
  t.outb(7, ISR.PTX);
  assert.equal(t.irq, false);
  // Masked: the bit is set, the line stays low.
  t.outb(0x0f, 0x3f & ~ISR.PTX);
  t.send(frame);
  assert.ok(t.inb(7) & ISR.PTX);
  assert.equal(t.irq, false);
  t.outb(0x0f, 0x3f);
  assert.equal(t.irq, true);
  assert.equal(counters(t)['tx-packets'], 2);
  assert.equal(counters(t)['tx-bytes'], 196);
});

test('transmit waits for the backend\'s credit with TXP set, then completes', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const frame = ethFrame(BROADCAST, 60);
  for (let i = 0; i < 64; i++) { t.send(frame); t.outb(7, 0xff); }
  assert.equal(t.host.frames().length, 64);
  t.send(frame);
  assert.equal(t.host.frames().length, 64, 'no credit: nothing sent');
  assert.equal(t.inb(0) & 0x04, 0x04, 'TXP set while waiting');
  assert.equal(t.inb(7) & ISR.PTX, 0);
  t.giveTxCredit(1);
  assert.equal(t.host.frames().length, 65);
  assert.ok(t.inb(7) & ISR.PTX);
});

test('transmit lengths out of range (TBCR 0 or 0xffff) abort with TXE, nothing is sent', () => {
  const t = new Ne2000TestDriver();
  t.start();
  for (const length of [0, 13, 1519, 0xffff]) {
    t.outb(7, 0xff);
    t.outb(0x04, 0x40); t.outb(0x05, length & 0xff); t.outb(0x06, length >> 8);
    t.outb(0, 0x26);
    assert.ok(t.inb(7) & ISR.TXE, `TBCR ${length}`);
    assert.equal(t.inb(4) & 0x08, 0x08, 'TSR.ABT');
  }
  assert.equal(t.host.frames().length, 0);
  assert.equal(t.device.drops.txBadLength, 4);
});

test('loopback (TCR) keeps a frame off the wire and puts it in our own ring', () => {
  const t = new Ne2000TestDriver();
  t.start({ rcr: RCR.AB });
  t.outb(0x0d, 0x02);
  const frame = ethFrame(BROADCAST, 80);
  t.send(frame);
  assert.equal(t.host.frames().length, 0);
  const got = t.receiveAll();
  assert.equal(got.length, 1);
  assert.deepEqual(got[0].frame, frame);
});

test('receive: header (status, next page, count), padding to 60 bytes, PRX, CURR moves; credits go back', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const small = ethFrame(MAC, 42);
  const big = ethFrame(MAC, 1514, 3);
  t.arrive(small);
  t.arrive(big);
  assert.ok(t.inb(7) & ISR.PRX);
  assert.equal(t.irq, true);
  const hdr = t.remoteRead(RX_START << 8, 4); // NS8390_init: CURR = PSTART, BNRY = PSTOP - 1
  assert.equal(hdr[0], 0x01, 'RSR: PRX, unicast');
  assert.equal(hdr[1], RX_START + 1, 'next page: one page for a 64-byte frame and header');
  assert.equal(hdr[2] | (hdr[3] << 8), 64);
  const got = t.receiveAll();
  assert.equal(got.length, 2);
  const padded = new Uint8Array(60);
  padded.set(small);
  assert.deepEqual(got[0].frame, padded);
  assert.deepEqual(got[1].frame, big);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 2);
  assert.equal(counters(t)['rx-packets'], 2);
  assert.equal(counters(t)['rx-bytes'], 42 + 1514);
});

test('receive wraps at PSTOP: the header and the data continue at PSTART, 8390.c reads every frame intact', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const sent: Uint8Array[] = [];
  // 200 frames of assorted sizes through a 58-page ring: it wraps many times.
  for (let i = 0; i < 200; i++) {
    const f = ethFrame(MAC, 60 + ((i * 397) % 1455), i);
    sent.push(f);
    t.arrive(f);
    if (i % 3 === 2) {
      const got = t.receiveAll().map((g) => g.frame);
      assert.deepEqual(got, sent.splice(0));
    }
  }
  assert.deepEqual(t.receiveAll().map((g) => g.frame), sent);
  assert.equal(t.headerMismatches, 0, 'every next-page pointer passes ei_receive\'s check');
});

test('a full ring: frames wait in the link (no loss) and come in once BNRY moves', () => {
  const t = new Ne2000TestDriver();
  t.start();
  for (let i = 0; i < 20; i++) t.arrive(ethFrame(MAC, 1514, i));
  assert.ok(t.link!.waiting > 0, 'some wait');
  assert.equal(t.inb(7) & ISR.OVW, 0, 'no overflow while frames wait');
  const got: Uint8Array[] = [];
  for (let round = 0; round < 20 && got.length < 20; round++) got.push(...t.receiveAll().map((g) => g.frame));
  assert.equal(got.length, 20);
  got.forEach((f, i) => assert.deepEqual(f, ethFrame(MAC, 1514, i)));
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 20);
});

test('a stream into a full ring as 8390.c takes it (9 frames per ei_receive, then the PRX ack): no frame is left unnoticed', () => {
  const t = new Ne2000TestDriver();
  t.start();
  const sent = Array.from({ length: 40 }, (_, i) => ethFrame(MAC, 1514 - (i % 3) * 500, i));
  for (const f of sent) t.arrive(f);
  const got: Uint8Array[] = [];
  // Each interrupt the guest services; the line must stay up as long as frames are unread.
  for (let irq = 0; irq < 40 && t.irq; irq++) got.push(...t.interruptLikeLinux());
  assert.equal(got.length, sent.length);
  got.forEach((f, i) => assert.deepEqual(f, sent[i]));
  assert.equal(t.irq, false, 'all read: the line is down');
  assert.equal(t.inb(7) & ISR.PRX, 0);
});

test('with dropOnOverflow: the DP8390 overflow, ISR.OVW, the missed-packet counter, nothing overwritten', () => {
  const t = new Ne2000TestDriver({ dropOnOverflow: true });
  t.start();
  for (let i = 0; i < 20; i++) t.arrive(ethFrame(MAC, 1514, i));
  assert.ok(t.inb(7) & ISR.OVW);
  const missed = t.inb(0x0f);
  assert.ok(missed > 0);
  assert.equal(t.inb(0x0f), 0, 'CNTR2 clears when read');
  const got = t.receiveAll().map((g) => g.frame);
  assert.equal(got.length + missed, 20);
  got.forEach((f, i) => assert.deepEqual(f, ethFrame(MAC, 1514, i)));
  assert.equal(t.device.drops.rxOverflow, missed);
});

test('address filter: our PAR, broadcast with AB, multicast by hash with AM, everything with PRO', () => {
  const group = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
  const other = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
  const bit = multicastHashIndex(Uint8Array.from(group));
  assert.notEqual(bit, multicastHashIndex(Uint8Array.from(other)));
  const mar = new Uint8Array(8);
  mar[bit >> 3] |= 1 << (bit & 7);
  const kinds = (rcr: number) => {
    const t = new Ne2000TestDriver();
    t.start({ rcr, mar });
    t.arrive(ethFrame(MAC, 60, 1));
    t.arrive(ethFrame([0x52, 0x54, 0, 0, 0, 1], 60, 2));
    t.arrive(ethFrame(BROADCAST, 60, 3));
    t.arrive(ethFrame(group, 60, 4));
    t.arrive(ethFrame(other, 60, 5));
    return t.receiveAll().map((g) => `${g.frame[0].toString(16)}:${g.status.toString(16)}`);
  };
  assert.deepEqual(kinds(0), ['52:1']);
  assert.deepEqual(kinds(RCR.AB), ['52:1', 'ff:21']);
  assert.deepEqual(kinds(RCR.AM), ['52:1', '1:21']);
  assert.deepEqual(kinds(RCR.PRO | RCR.AB | RCR.AM).length, 5);
  // The hash is Linux's ether_crc (big-endian CRC-32), top 6 bits: a known value.
  assert.equal(ethernetCrcBe(Uint8Array.from(BROADCAST)) >>> 26, 0x3f);
});

test('monitor mode and a stopped card take nothing into the ring; frames are counted as dropped', () => {
  const t = new Ne2000TestDriver();
  t.start({ rcr: RCR.MON });
  t.arrive(ethFrame(MAC, 60));
  assert.equal(t.receiveAll().length, 0);
  t.outb(0, 0x21);
  t.arrive(ethFrame(MAC, 60));
  assert.equal(t.device.drops.rxMonitor, 1);
  assert.equal(t.device.drops.rxStopped, 1);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 2);
  assert.equal(counters(t)['rx-dropped'], 2);
});

test('bad rings (CVE-2015-5278/5279 patterns): PSTART == PSTOP, inverted, CURR outside, BNRY outside, ring past the memory', () => {
  const cases: [number, number, number, number][] = [
    [0x50, 0x50, 0x50, 0x50], // PSTART == PSTOP, CURR == BNRY
    [0x80, 0x40, 0x60, 0x60], // inverted
    [0x46, 0x80, 0xff, 0x46], // CURR outside
    [0x46, 0x80, 0x80, 0x50], // CURR == PSTOP
  ];
  for (const [pstart, pstop, curr, bnry] of cases) {
    const t = new Ne2000TestDriver();
    t.start();
    t.outb(0, 0x21);
    t.outb(1, pstart); t.outb(2, pstop); t.outb(3, bnry);
    t.outb(0, 0x61); t.outb(7, curr); t.outb(0, 0x22);
    t.arrive(ethFrame(MAC, 1514));
    assert.equal(t.device.drops.rxBadRing, 1, `ring ${pstart}-${pstop} curr ${curr} bnry ${bnry}`);
    assert.ok(t.logs.some((l) => l.includes('receive ring is not usable')));
  }
  // BNRY outside the ring counts as the page before PSTART: frames still come in, bounded.
  {
    const t = new Ne2000TestDriver();
    t.start();
    t.outb(3, 0x10);
    for (let i = 0; i < 30; i++) t.arrive(ethFrame(MAC, 1514, i));
    assert.equal(t.device.drops.rxBadRing, 0);
    assert.ok(t.link!.waiting > 0, 'the ring filled up to the page before PSTART and stopped');
  }
  // A valid ring whose end is past card memory (pages 0xf0-0xff) and the top page: the header
  // and data that fall outside card memory vanish; nothing wraps into the 16-bit address's start.
  const t = new Ne2000TestDriver();
  t.start({ rcr: RCR.PRO });
  t.outb(0, 0x21);
  t.outb(1, 0x70); t.outb(2, 0xff); t.outb(3, 0xfd);
  t.outb(0, 0x61); t.outb(7, 0xfe); t.outb(0, 0x22);
  const before = t.remoteRead(0x7000, 0x1000);
  for (let i = 0; i < 30; i++) t.arrive(ethFrame(MAC, 1514, i));
  const after = t.remoteRead(0x7000, 0x1000);
  assert.ok(after.some((b, i) => b !== before[i]), 'frames wrapped into 0x7000 from PSTOP 0xff');
  assert.equal(t.device.ram.length, 0x4000);
});

test('--nic and nics: model as the first word or model=, default virtio, clear errors', () => {
  assert.equal(parseNic('ne2k_pci,tap=tap0').model, 'ne2k_pci');
  assert.equal(parseNic('tap=tap0,model=ne2k_pci').model, 'ne2k_pci');
  assert.equal(parseNic('ne2k_pci,model=ne2k_pci').model, 'ne2k_pci');
  assert.equal(parseNic('tap=tap0').model, 'virtio');
  assert.equal(parseNic('virtio,udp=127.0.0.1:1/127.0.0.1:2').model, 'virtio');
  assert.throws(() => parseNic('virtio,model=ne2k_pci'), /two models/);
  assert.throws(() => parseNic('model=e1000'), /"e1000" is not a NIC model \(virtio, ne2k_pci\)/);
  const config = machineConfigFromJson({ name: 'x', nics: [{ model: 'ne2k_pci' }, {}] }, 'vm.json');
  assert.deepEqual(config.nics?.map((n) => n.model), ['ne2k_pci', 'virtio']);
});
