// The ATAPI drive's media change state machine at register level (commands through the AHCI
// HBA, as Linux's sr and SeaBIOS send them) and the AHCI model's host messages that change the
// disc while the guest runs: unit attention 6/28/00 after an insert, 2/3A/00 with no medium, a
// swap's not-ready-then-attention sequence, GET EVENT STATUS NOTIFICATION's media events and
// status, the guest's lock refusing a host eject (and asking the guest to eject), force, and
// what the VM host hears.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ATA_CMD } from '../../main/vmm/devices/ahci/ata';
import { AtapiCdrom, MediumLockedError } from '../../main/vmm/devices/ahci/atapi-cdrom';
import { AhciHba, PXIS } from '../../main/vmm/devices/ahci/hba';
import { AhciMedia } from '../../main/vmm/devices/ahci/media';
import { ImageError } from '../../main/vmm/devices/usb/storage/block-backend';
import { CDROM_KIND, decodeCdromMessage, encodeCdromMessage } from '../../main/vmm/shared/cdrom-messages';
import { AhciTestDriver, h2d, MemoryDisk } from '../helpers/ahci-driver';

const ISO_BYTES = 64 * 2048;

function drive(medium: MemoryDisk | null) {
  let media: AhciMedia | null = null;
  const cdrom: AtapiCdrom = new AtapiCdrom({ name: 'cd0', medium, onEject: () => media?.guestEjected(cdrom) });
  const hba = new AhciHba('ahci', [cdrom]);
  const d = new AhciTestDriver(hba);
  d.startPort(0);
  const sent: { kind: number; message: Record<string, unknown> }[] = [];
  const isos = new Map<string, MemoryDisk>();
  media = new AhciMedia([{ drive: cdrom, port: 0, path: medium === null ? null : '/first.iso' }], {
    send: (kind, payload) => { sent.push({ kind, message: decodeCdromMessage(payload) as Record<string, unknown> }); return true; },
    setTimer: () => () => {},
    log: () => {},
  }, (path) => {
    if (path === '/missing.iso') throw new ImageError(path, 'missing', 'it does not exist');
    const iso = new MemoryDisk(ISO_BYTES, true);
    isos.set(path, iso);
    return iso;
  });
  const request = (body: Record<string, unknown>) => {
    media?.handle(CDROM_KIND.REQUEST, encodeCdromMessage({ id: sent.length + 1, ...body } as never));
    return sent[sent.length - 1].message;
  };
  return { cdrom, d, sent, isos, request };
}

function atapi(d: AhciTestDriver, cdb: number[], bytes = 2048) {
  const is = d.run(0, { fis: h2d(ATA_CMD.PACKET, 0, 0, 1, 0), cdb: [...cdb, ...new Array(16 - cdb.length).fill(0)], bytes });
  const fis = d.d2h(0);
  if (is & PXIS.TFES) d.recover(0);
  return { status: fis[2], error: fis[3], data: d.data(0, bytes) };
}

/** TEST UNIT READY's outcome, then REQUEST SENSE's key/ASC/ASCQ when it failed. */
function tur(d: AhciTestDriver): string {
  const r = atapi(d, [0x00], 0);
  if ((r.status & 1) === 0) return 'ready';
  const s = atapi(d, [0x03, 0, 0, 0, 18], 18).data;
  return `${s[2] & 0xf}/${s[12].toString(16).padStart(2, '0')}/${s[13].toString(16).padStart(2, '0')}`;
}

/** GET EVENT STATUS NOTIFICATION (polled, media class): [event code, media status]. */
function gesn(d: AhciTestDriver): [number, number] {
  const r = atapi(d, [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 8);
  assert.equal(r.status & 1, 0, 'GESN never fails for a pending unit attention');
  assert.equal(r.data[2] & 7, 4, 'media class');
  return [r.data[4], r.data[5]];
}

test('insert into an empty drive: 2/3A/00 before, then 6/28/00 once, then ready; GESN: new media, present', () => {
  const { d, request } = drive(null);
  assert.equal(tur(d), '2/3a/00');
  assert.deepEqual(gesn(d), [0, 0], 'no event, no medium, tray closed');
  const reply = request({ op: 'insert', path: '/a.iso' });
  assert.equal(reply.ok, true);
  assert.deepEqual(reply.drives, [{ drive: 'cd0', port: 0, path: '/a.iso', locked: false, trayOpen: false }]);
  assert.deepEqual(gesn(d), [2, 2], 'new media, present');
  assert.deepEqual(gesn(d), [0, 2], 'reported once');
  assert.equal(tur(d), '6/28/00');
  assert.equal(tur(d), 'ready');
  const cap = atapi(d, [0x25], 8);
  assert.equal(new DataView(cap.data.buffer).getUint32(0), ISO_BYTES / 2048 - 1);
});

test('a host eject: 2/3A/00 at once (no unit attention), removal event, tray open; a later insert closes it', () => {
  const { d, request, cdrom } = drive(new MemoryDisk(ISO_BYTES, true));
  assert.equal(tur(d), 'ready');
  const first = cdrom.medium as MemoryDisk;
  const reply = request({ op: 'eject' });
  assert.deepEqual(reply.drives, [{ drive: 'cd0', port: 0, path: null, locked: false, trayOpen: true }]);
  assert.ok(first.closed, 'the ISO is closed');
  assert.equal(tur(d), '2/3a/00');
  assert.deepEqual(gesn(d), [3, 1], 'media removal; no medium, tray open');
  request({ op: 'insert', path: '/b.iso' });
  assert.deepEqual(gesn(d), [2, 2]);
  assert.equal(tur(d), '6/28/00');
  assert.equal(tur(d), 'ready');
});

test('a swap: NOT READY once, then UNIT ATTENTION, then ready; GESN: removal, then new media', () => {
  const { d, request, isos } = drive(new MemoryDisk(ISO_BYTES, true));
  request({ op: 'insert', path: '/a.iso' });
  assert.equal(tur(d), '2/3a/00', 'the tray cycle');
  assert.equal(tur(d), '6/28/00');
  assert.equal(tur(d), 'ready');
  assert.deepEqual(gesn(d), [3, 2], 'removal first');
  assert.deepEqual(gesn(d), [2, 2], 'then new media');
  assert.deepEqual(gesn(d), [0, 2]);
  request({ op: 'insert', path: '/b.iso' });
  assert.ok(isos.get('/a.iso')?.closed, 'the swapped-out ISO is closed');
});

test('the guest\'s lock: a host eject is refused with a sentence and becomes an eject request; force ejects and unlocks', () => {
  const { d, request, cdrom } = drive(new MemoryDisk(ISO_BYTES, true));
  const iso = cdrom.medium as MemoryDisk;
  assert.equal(atapi(d, [0x1e, 0, 0, 0, 1], 0).status & 1, 0, 'PREVENT MEDIUM REMOVAL');
  let reply = request({ op: 'eject' });
  assert.equal(reply.ok, false);
  assert.equal(reply.code, 'invalid-state');
  assert.match(String(reply.error), /the guest has locked cd0 \(PREVENT ALLOW MEDIUM REMOVAL\); it was asked to eject the disc/);
  assert.equal(cdrom.medium, iso, 'still in');
  assert.ok(!iso.closed);
  assert.equal(tur(d), 'ready', 'no unit attention for a refused eject');
  assert.deepEqual(gesn(d), [1, 2], 'an eject request event for the guest');
  reply = request({ op: 'insert', path: '/other.iso' });
  assert.equal(reply.ok, false, 'a locked disc is not swapped either');
  assert.equal(cdrom.medium, iso);
  reply = request({ op: 'list' });
  assert.deepEqual(reply.drives, [{ drive: 'cd0', port: 0, path: '/first.iso', locked: true, trayOpen: false }]);
  reply = request({ op: 'eject', force: true });
  assert.equal(reply.ok, true);
  assert.deepEqual(reply.drives, [{ drive: 'cd0', port: 0, path: null, locked: false, trayOpen: true }]);
  assert.ok(iso.closed);
  assert.equal(tur(d), '2/3a/00');
  // The guest unlocks itself and ejects: START STOP UNIT works, and the VM host hears of it.
  const { d: d2, sent, cdrom: cdrom2 } = drive(new MemoryDisk(ISO_BYTES, true));
  atapi(d2, [0x1e, 0, 0, 0, 1], 0);
  assert.equal(atapi(d2, [0x1b, 0, 0, 0, 2], 0).error >> 4, 5, 'the guest\'s own eject is refused while it locks');
  atapi(d2, [0x1e, 0, 0, 0, 0], 0);
  assert.equal(atapi(d2, [0x1b, 0, 0, 0, 2], 0).status & 1, 0);
  assert.equal(cdrom2.medium, null);
  assert.deepEqual(sent.at(-1), { kind: CDROM_KIND.MEDIA, message: { drives: [{ drive: 'cd0', port: 0, path: null, locked: false, trayOpen: true }] } });
});

test('the drive itself: insert(force false) on a locked disc throws MediumLockedError; eject on an empty drive is "empty"', () => {
  const cdrom = new AtapiCdrom({ name: 'cd1', medium: new MemoryDisk(ISO_BYTES, true) });
  const hba = new AhciHba('ahci', [cdrom]);
  const d = new AhciTestDriver(hba);
  d.startPort(0);
  atapi(d, [0x1e, 0, 0, 0, 1], 0);
  assert.throws(() => cdrom.insert(new MemoryDisk(ISO_BYTES, true), false), MediumLockedError);
  assert.equal(cdrom.eject(false), 'locked');
  assert.equal(cdrom.eject(true), 'ejected');
  assert.equal(cdrom.eject(false), 'empty');
});

test('bad requests: a missing ISO is not-found, a relative path and an unknown drive are refused, nothing changes', () => {
  const { request, cdrom } = drive(new MemoryDisk(ISO_BYTES, true));
  const before = cdrom.medium;
  let reply = request({ op: 'insert', path: '/missing.iso' });
  assert.deepEqual([reply.ok, reply.code, reply.error], [false, 'not-found', 'disk image /missing.iso: it does not exist']);
  reply = request({ op: 'insert', path: 'rel.iso' });
  assert.deepEqual([reply.ok, reply.code], [false, 'invalid-argument']);
  reply = request({ op: 'eject', drive: 'cd9' });
  assert.deepEqual([reply.ok, reply.code, reply.error], [false, 'not-found', 'there is no CD-ROM drive "cd9" (drives: cd0)']);
  reply = request({ op: 'format-c' });
  assert.equal(reply.ok, false);
  assert.equal(cdrom.medium, before);
});

test('the VM host: a relaunch (reset) puts in the discs the drives report, not the config\'s; requests need a CD-ROM drive and a running VM', async () => {
  const { VmHost } = await import('../../main/vmm/host/vm-host');
  const { defaultConfig } = await import('../../main/vmm/config');
  const config = {
    ...defaultConfig(),
    disks: [
      { path: '/sys.img', readOnly: false },
      { path: '/first.iso', readOnly: true, bus: 'sata' as const, media: 'cdrom' as const },
      { readOnly: true, bus: 'sata' as const, media: 'cdrom' as const, name: 'cd2' },
    ],
  };
  const host = new VmHost(config);
  const internals = host as unknown as { launchConfig(): typeof config; onCdromMessage(kind: number, payload: Uint8Array): void };
  assert.deepEqual(internals.launchConfig().disks, config.disks, 'before any change: the config');
  internals.onCdromMessage(CDROM_KIND.MEDIA, encodeCdromMessage({
    drives: [{ drive: 'disk1', port: 0, path: null, locked: false, trayOpen: true }, { drive: 'cd2', port: 1, path: '/new.iso', locked: false, trayOpen: false }],
  }));
  assert.deepEqual(internals.launchConfig().disks, [
    { path: '/sys.img', readOnly: false },
    { readOnly: true, bus: 'sata', media: 'cdrom' },
    { readOnly: true, bus: 'sata', media: 'cdrom', name: 'cd2', path: '/new.iso' },
  ]);
  assert.deepEqual(config.disks[1], { path: '/first.iso', readOnly: true, bus: 'sata', media: 'cdrom' }, 'the config itself is untouched');
  await assert.rejects(host.insertCdrom('/a.iso'), /the VM is stopped/);
  await assert.rejects(new VmHost(defaultConfig()).cdromDrives(), /this VM has no CD-ROM drive/);
});
