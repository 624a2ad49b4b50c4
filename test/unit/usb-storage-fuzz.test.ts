// Fuzz: a guest driving the USB stick with random CBWs (valid, malformed and nonsense CDBs,
// any host length and direction) and random transfer sequences, while backend completions
// arrive late and in any order, with cancels, halts, resets and failing I/O mixed in.
// Nothing may throw, every transfer completes exactly once, no backend request leaves the
// image, and a well-behaved host reads back exactly what the image holds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BULK_IN, BULK_OUT, UsbStorage } from '../../main/vmm/devices/usb/storage/usb-storage';
import type { UsbTransfer, UsbTransferType } from '../../main/vmm/devices/usb/usb-device';
import { Prng, fuzzCases } from '../helpers/prng';
import { enumerate, makeTransfer, RecordingPort, request } from '../helpers/usb';
import { DeferredBackend, cbw, imageBytes, parseCsw } from '../helpers/usb-storage';

const CASES_PER_SEED = fuzzCases(4000);
const IMAGE_BLOCKS = 128;

const OPCODES = [
  0x00, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x23, 0x25, 0x28, 0x2a, 0x35, 0x5a, 0x88, 0x8a, 0x91, 0x9e, 0xa0,
  // READ and WRITE again: they are what moves data.
  0x28, 0x28, 0x28, 0x2a, 0x2a, 0x88, 0x88, 0x8a,
];
const HOST_LENGTHS = [0, 0, 13, 18, 36, 192, 255, 512, 512, 1024, 4096, 65536];

function randomLba(rng: Prng): number {
  switch (rng.below(6)) {
    case 0: case 3: case 4: return rng.below(IMAGE_BLOCKS);
    case 1: return IMAGE_BLOCKS - 1 - rng.below(3);
    case 2: return IMAGE_BLOCKS + rng.below(3);
    default: return rng.next();
  }
}

function randomCdb(rng: Prng): Uint8Array {
  const cdb = new Uint8Array(16);
  if (rng.below(5) === 0) {
    for (let i = 0; i < 16; i++) cdb[i] = rng.below(256);
    return cdb;
  }
  const op = rng.pick(OPCODES);
  cdb[0] = op;
  for (let i = 1; i < 16; i++) cdb[i] = rng.below(4) === 0 ? rng.below(256) : 0;
  const view = new DataView(cdb.buffer);
  const blocks = rng.pick([0, 1, 1, 2, 2, 3, 8, 8, 64, 129, rng.below(0x10000)]);
  if (op === 0x28 || op === 0x2a || op === 0x35) {
    view.setUint32(2, randomLba(rng));
    view.setUint16(7, blocks);
  } else if (op === 0x88 || op === 0x8a || op === 0x91) {
    view.setUint32(2, rng.below(8) === 0 ? rng.next() : 0);
    view.setUint32(6, randomLba(rng));
    view.setUint32(10, blocks);
  } else if (op === 0x9e) {
    cdb[1] = rng.below(3) === 0 ? rng.below(32) : 0x10;
    view.setUint32(10, rng.pick([0, 8, 32, 100]));
  } else if (op === 0x12) {
    cdb[1] = rng.below(2);
    cdb[2] = rng.pick([0, 0x80, 0x83, 0xb0, rng.below(256)]);
    view.setUint16(3, rng.pick([0, 5, 36, 96, 255, 0xffff]));
  } else if (op === 0x1a || op === 0x5a) {
    cdb[2] = rng.pick([0x3f, 0x08, 0x0a, 0x48, 0xc8, rng.below(256)]);
  }
  return cdb;
}

/** Host length and direction that agree with the command most of the time. */
function hostPhase(rng: Prng, cdb: Uint8Array): { length: number; dirIn: boolean } {
  const view = new DataView(cdb.buffer);
  const op = cdb[0];
  let length = rng.pick(HOST_LENGTHS);
  let dirIn = rng.below(2) === 0;
  if (rng.below(3) > 0) {
    if (op === 0x28 || op === 0x2a) {
      length = view.getUint16(7) * 512;
      dirIn = op === 0x28;
    } else if (op === 0x88 || op === 0x8a) {
      length = view.getUint32(10) * 512;
      dirIn = op === 0x88;
    } else if (op === 0x12) {
      length = view.getUint16(3);
      dirIn = true;
    }
  }
  if (rng.below(50) === 0) length = rng.next();
  return { length: Math.min(length, 0xffffffff), dirIn };
}

interface Tracked {
  transfer: UsbTransfer;
  completions: number;
}

for (const seed of [1, 0x5eed, 20261127]) {
  test(`fuzz: ${CASES_PER_SEED} random commands and transfer sequences against a stick (seed ${seed})`, () => {
    const rng = new Prng(seed);
    const original = imageBytes(IMAGE_BLOCKS * 512);
    const readOnly = seed === 0x5eed;
    const backend = new DeferredBackend(original.slice(), readOnly);
    const device = new UsbStorage(backend, { speed: rng.pick(['full', 'high', 'super'] as const) });
    const port = new RecordingPort();
    device.attach(port);
    enumerate(device);

    const open = new Set<Tracked>();
    let submitted = 0;
    let completed = 0;
    let verifiedReads = 0;

    const submit = (transfer: UsbTransfer): Tracked => {
      const tracked: Tracked = { transfer, completions: 0 };
      open.add(tracked);
      submitted++;
      device.submit(transfer, (t) => {
        assert.equal(t, transfer, 'done gets the transfer it was given');
        tracked.completions++;
        assert.equal(tracked.completions, 1, 'a transfer completes exactly once');
        assert.notEqual(t.status, 'pending');
        assert.ok(t.actualLength >= 0 && t.actualLength <= t.data.length, `actualLength ${t.actualLength} of ${t.data.length}`);
        open.delete(tracked);
        completed++;
      });
      return tracked;
    };
    const bulk = (dirIn: boolean, data: Uint8Array, type: UsbTransferType = 'bulk') =>
      submit(makeTransfer(dirIn ? BULK_IN & 0x0f : BULK_OUT, dirIn, type, data));
    const recover = () => {
      request(device, 0x21, 0xff, 0, 0, 0);
      request(device, 0x02, 0x01, 0, BULK_IN, 0);
      request(device, 0x02, 0x01, 0, BULK_OUT, 0);
    };
    /** Cancels what the host left waiting and runs reset recovery. */
    const cleanUp = () => {
      // Half the time backend work is still on its way when the reset comes.
      if (rng.below(2) === 0) backend.runAll();
      for (const t of [...open]) device.cancel(t.transfer);
      recover();
    };
    /** Waits for a transfer by running backend completions; false if it never completes. */
    const settle = (t: Tracked): boolean => {
      for (let i = 0; i < 64 && t.completions === 0; i++) {
        if (!backend.runOne(rng.below(4))) break;
      }
      return t.completions === 1;
    };

    for (let c = 0; c < CASES_PER_SEED; c++) {
      const cdb = randomCdb(rng);
      const cdbLength = rng.below(8) === 0 ? rng.below(20) : 16;
      const { length, dirIn } = hostPhase(rng, cdb);
      backend.failReads = rng.below(20) === 0;
      backend.failWrites = rng.below(20) === 0;
      backend.failFlush = rng.below(20) === 0;
      const block = cbw(c + 1, length, dirIn, cdb.subarray(0, Math.min(cdbLength, 16)));
      if (cdbLength > 16) block[14] = cdbLength;
      const lun = rng.below(10) === 0 ? rng.below(16) : 0;
      block[13] = lun;

      if (rng.below(2) === 0) {
        // A well-behaved host: from a clean state, CBW, data in chunks, CSW; recovery when the
        // device asks for it.
        cleanUp();
        const sent = bulk(false, block);
        if (!settle(sent) || sent.transfer.status !== 'ok') {
          cleanUp();
          continue;
        }
        const received: Uint8Array[] = [];
        let moved = 0;
        let stalled = false;
        while (moved < length && moved < 200_000 && !stalled) {
          const size = Math.min(length - moved, rng.pick([13, 512, 1000, 4096, 65536]));
          const t = bulk(dirIn, new Uint8Array(size).fill(0xee));
          if (!settle(t)) {
            stalled = true;
            break;
          }
          if (t.transfer.status === 'stall') {
            stalled = true;
            request(device, 0x02, 0x01, 0, dirIn ? BULK_IN : BULK_OUT, 0);
            break;
          }
          received.push(t.transfer.data.slice(0, t.transfer.actualLength));
          moved += t.transfer.actualLength;
          if (t.transfer.actualLength < size) break;
        }
        if (moved < length && !stalled && moved >= 200_000) {
          // A host length of gigabytes: give up on this command the way Linux does after a timeout.
          recover();
          continue;
        }
        const csw = bulk(true, new Uint8Array(13));
        if (!settle(csw) || csw.transfer.status !== 'ok') {
          cleanUp();
          continue;
        }
        const status = parseCsw(csw.transfer.data);
        assert.equal(status.signature, 0x53425355);
        assert.equal(status.tag, c + 1);
        assert.ok(status.status <= 2);
        if (status.status === 2) recover();
        // A good READ with matching lengths returns exactly the image's bytes.
        const op = cdb[0];
        if ((op === 0x28 || op === 0x88) && dirIn && lun === 0 && cdbLength >= (op === 0x28 ? 10 : 16) && cdbLength <= 16 && status.status === 0 && length > 0 && moved === length) {
          const view = new DataView(cdb.buffer);
          const lba = op === 0x28 ? view.getUint32(2) : view.getUint32(6);
          const blocks = op === 0x28 ? view.getUint16(7) : view.getUint32(10);
          if (blocks * 512 === length && (op === 0x28 || view.getUint32(2) === 0)) {
            const data = Buffer.concat(received);
            assert.deepEqual(new Uint8Array(data), backend.bytes.subarray(lba * 512, lba * 512 + length));
            verifiedReads++;
          }
        }
        continue;
      }

      // A chaotic host: anything in any order.
      bulk(false, rng.below(10) === 0 ? block.subarray(0, rng.below(31)) : block);
      const actions = 1 + rng.below(12);
      for (let a = 0; a < actions; a++) {
        switch (rng.below(16)) {
          case 0: case 1: case 2:
            bulk(true, new Uint8Array(rng.pick([0, 1, 12, 13, 64, 512, 513, 4096, 70000])));
            break;
          case 3: case 4:
            bulk(false, new Uint8Array(rng.pick([0, 1, 31, 512, 4096])).fill(rng.below(256)));
            break;
          case 5: case 6: case 7:
            backend.runOne(rng.below(8));
            break;
          case 8: {
            const list = [...open];
            if (list.length > 0) device.cancel(rng.pick(list).transfer);
            break;
          }
          case 9:
            request(device, 0x02, 0x01, 0, rng.pick([BULK_IN, BULK_OUT]), 0);
            break;
          case 10:
            request(device, 0x21, 0xff, rng.below(20) === 0 ? 1 : 0, 0, 0);
            break;
          case 11:
            if (rng.below(8) === 0) {
              device.reset();
              enumerate(device);
            } else {
              recover();
            }
            break;
          case 12:
            request(device, 0xa1, 0xfe, 0, rng.below(3) === 0 ? 1 : 0, rng.below(3));
            request(device, 0x02, 0x03, 0, rng.pick([BULK_IN, BULK_OUT]), 0);
            break;
          case 13:
            bulk(rng.below(2) === 0, new Uint8Array(8), rng.pick(['interrupt', 'control', 'isochronous'] as const));
            break;
          case 14:
            submit(makeTransfer(rng.below(16), rng.below(2) === 0, 'bulk', new Uint8Array(rng.below(600))));
            break;
          default:
            bulk(false, cbw(rng.next(), rng.pick(HOST_LENGTHS), rng.below(2) === 0, randomCdb(rng).subarray(0, 1 + rng.below(16))));
        }
      }
      // Get back to a known state now and then, as a driver's error handling would.
      if (rng.below(4) === 0) cleanUp();
    }

    backend.runAll();
    device.reset();
    backend.runAll();
    device.detach();
    assert.equal(open.size, 0, 'every transfer completed');
    assert.equal(completed, submitted);
    assert.deepEqual(backend.violations, [], 'no backend request outside the image');
    if (readOnly) assert.deepEqual(backend.bytes, original, 'a read-only stick is never written');
    assert.ok(verifiedReads > 50, `reads checked against the image: ${verifiedReads}`);
    assert.ok(backend.writes > (readOnly ? -1 : 50), `writes: ${backend.writes}`);
  });
}
