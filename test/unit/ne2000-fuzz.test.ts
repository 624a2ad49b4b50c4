// Fuzz: a guest writing random values to every NE2000 register on every page (PSTART/PSTOP/
// BNRY/CURR anywhere, inverted or equal, RSAR/RBCR crossing card memory and the 16-bit end,
// TBCR up to 0xffff, random commands and DCR modes), random data-port and reset-port accesses
// of sizes 1, 2 and 4, while the backend sends frames of random sizes and destinations and
// returns transmit credit at random. Nothing may throw; the card's memory stays 16 KiB; every
// frame sent is within Ethernet's limits; every frame from the host is acknowledged once it
// left the link's queue; and after a reset and a Linux-style start a frame goes through both ways.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NE2K_MAX_FRAME, NE2K_RAM_BYTES } from '../../main/vmm/devices/net/ne2000';
import { NET_KIND, NET_MIN_FRAME } from '../../main/vmm/shared/net-messages';
import { fuzzCases, Prng } from '../helpers/prng';
import { ethFrame, MAC, Ne2000TestDriver } from '../helpers/ne2000-driver';

const ROUNDS_PER_SEED = fuzzCases(3000);

function randomByte(rng: Prng): number {
  return rng.pick([0, 1, 0x3f, 0x40, 0x46, 0x60, 0x7f, 0x80, 0xc0, 0xfe, 0xff, rng.below(256)]);
}

function fuzzSeed(seed: number): void {
  const rng = new Prng(seed);
  const t = new Ne2000TestDriver({ dropOnOverflow: rng.below(2) === 1 });
  let arrived = 0;
  for (let round = 0; round < ROUNDS_PER_SEED; round++) {
    t.host.full = rng.below(10) === 0;
    switch (rng.below(10)) {
      case 0: case 1: case 2: {
        const reg = rng.below(16);
        const value = reg === 0 ? rng.below(256) : randomByte(rng);
        t.device.ports.write(reg, rng.pick([1, 1, 1, 2, 4]), value);
        break;
      }
      case 3: t.device.ports.read(rng.below(0x20), rng.pick([1, 2, 4])); break;
      case 4: {
        const size = rng.pick([1, 2, 4]);
        for (let n = rng.below(64); n > 0; n--) {
          if (rng.below(2)) t.device.ports.read(0x10 + rng.below(8), size);
          else t.device.ports.write(0x10 + rng.below(8), size, rng.next());
        }
        break;
      }
      case 5: {
        const dst = rng.pick([MAC, Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), Uint8Array.of(1, 0, 0x5e, 0, 0, rng.below(256)), Uint8Array.of(2, 0, 0, 0, 0, 1)]);
        const length = rng.pick([0, 5, 14, 42, 60, 61, 252, 256, 1514, 1518, 1519, 4000, 1 + rng.below(1600)]);
        t.arrive(length < 14 ? Uint8Array.from({ length }, (_, i) => dst[i] ?? i) : ethFrame(dst, length, round));
        arrived++;
        break;
      }
      case 6: if (t.host.timers.length) t.host.timers.splice(0).forEach((fn) => fn()); else t.giveTxCredit(rng.below(8)); break;
      case 7: t.device.ports.write(0, 1, rng.pick([0x22, 0x26, 0x0a, 0x12, 0x1a, 0x21, 0x62, 0xa2, 0xe2]) ); break;
      case 8: if (rng.below(20) === 0) t.device.ports.read(0x1f, 1); break;
      default: {
        // A ring and remote DMA window chosen to straddle edges.
        t.device.ports.write(0, 1, 0x21);
        for (const reg of [1, 2, 3, 8, 9, 0x0a, 0x0b, 4, 5, 6]) t.device.ports.write(reg, 1, randomByte(rng));
        t.device.ports.write(0, 1, 0x61);
        t.device.ports.write(7, 1, randomByte(rng));
        t.device.ports.write(0, 1, rng.pick([0x22, 0x26, 0x0a, 0x12]));
      }
    }
    assert.equal(t.device.ram.length, NE2K_RAM_BYTES);
  }
  t.host.full = false;
  t.host.timers.splice(0).forEach((fn) => fn());
  for (const f of t.host.frames()) assert.ok(f.length >= NET_MIN_FRAME && f.length <= NE2K_MAX_FRAME, `a ${f.length}-byte frame was sent`);
  // Every frame that left the link's queue was acknowledged.
  t.device.ports.write(0, 1, 0x21); // a stop discards what waits
  assert.equal(t.link!.waiting, 0);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), arrived, `seed ${seed}: credits for every frame`);
  // Working again after a reset and a start.
  t.reset();
  t.start();
  t.giveTxCredit(64);
  const before = t.host.frames().length;
  const frame = ethFrame(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), 100);
  t.send(frame);
  assert.equal(t.host.frames().length, before + 1, `seed ${seed}: a frame goes out after a reset`);
  assert.deepEqual(t.host.frames()[before], frame);
  t.arrive(ethFrame(MAC, 300, 9));
  const got = t.receiveAll();
  assert.equal(got.length, 1, `seed ${seed}: a frame comes in after a reset`);
  assert.deepEqual(got[0].frame, ethFrame(MAC, 300, 9));
}

test('NE2000 survives random register, data-port and reset accesses with frames both ways', () => {
  for (let seed = 1; seed <= 8; seed++) fuzzSeed(seed * 7919);
});
