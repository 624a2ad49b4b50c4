import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Cmos, REG_A_UIP, REG_B, REG_C, RTC } from '../../main/vmm/devices/cmos';

const INDEX = 0;
const DATA = 1;

/** A CMOS whose host clock the test moves by hand. */
function setup(start = Date.UTC(2024, 1, 29, 13, 45, 56, 500)) {
  const clock = { now: start };
  const cmos = new Cmos(() => clock.now);
  const read = (reg: number) => {
    cmos.write(INDEX, 1, reg);
    return cmos.read(DATA, 1);
  };
  const write = (reg: number, value: number) => {
    cmos.write(INDEX, 1, reg);
    cmos.write(DATA, 1, value);
  };
  return { cmos, clock, read, write };
}

test('the index port masks the register to 7 bits and keeps the NMI-disable bit', () => {
  const { cmos, read, write } = setup();
  write(0x40, 0x99);
  cmos.write(INDEX, 1, 0xc0); // NMI masked, register 0x40
  assert.equal(cmos.nmiMasked, true);
  assert.equal(cmos.selectedIndex, 0x40);
  assert.equal(cmos.read(DATA, 1), 0x99);
  cmos.write(INDEX, 1, 0x40);
  assert.equal(cmos.nmiMasked, false);
  assert.equal(read(0x40), 0x99);
  // The index register is write-only.
  assert.equal(cmos.read(INDEX, 1), 0xff);
});

test('a 16-bit write to 0x70 sets the index and writes the data port', () => {
  const { cmos, read } = setup();
  cmos.write(INDEX, 2, 0x5a00 | 0x41);
  assert.equal(read(0x41), 0x5a);
});

test('time registers come from the host clock in BCD, 24-hour mode by default', () => {
  const { read } = setup();
  assert.equal(read(RTC.SECONDS), 0x56);
  assert.equal(read(RTC.MINUTES), 0x45);
  assert.equal(read(RTC.HOURS), 0x13);
  assert.equal(read(RTC.DAY_OF_WEEK), 5); // Thursday (Sunday = 1)
  assert.equal(read(RTC.DAY_OF_MONTH), 0x29);
  assert.equal(read(RTC.MONTH), 0x02);
  assert.equal(read(RTC.YEAR), 0x24);
  assert.equal(read(RTC.CENTURY), 0x20);
});

test('register B selects binary data and 12-hour format', () => {
  const { read, write } = setup();
  write(RTC.REG_B, REG_B.DM_BINARY | REG_B.HOURS_24);
  assert.equal(read(RTC.SECONDS), 56);
  assert.equal(read(RTC.HOURS), 13);
  assert.equal(read(RTC.YEAR), 24);
  write(RTC.REG_B, 0); // BCD, 12-hour
  assert.equal(read(RTC.HOURS), 0x81); // 1 PM
  write(RTC.REG_B, REG_B.DM_BINARY);
  assert.equal(read(RTC.HOURS), 0x81);
  const midnight = setup(Date.UTC(2024, 0, 1, 0, 30, 0));
  midnight.write(RTC.REG_B, 0);
  assert.equal(midnight.read(RTC.HOURS), 0x12); // 12 AM
});

test('the clock keeps running with the host clock', () => {
  const { clock, read } = setup();
  clock.now += 5000;
  assert.equal(read(RTC.SECONDS), 0x01);
  assert.equal(read(RTC.MINUTES), 0x46);
});

test('setting the time with SET freezes the registers, then runs from the new time', () => {
  const { clock, read, write } = setup();
  write(RTC.REG_B, REG_B.SET | REG_B.HOURS_24 | REG_B.UIE);
  assert.equal(read(RTC.REG_B) & REG_B.UIE, 0, 'SET clears UIE');
  write(RTC.SECONDS, 0x30);
  write(RTC.MINUTES, 0x15);
  write(RTC.HOURS, 0x08);
  write(RTC.DAY_OF_MONTH, 0x31);
  write(RTC.MONTH, 0x12);
  write(RTC.YEAR, 0x99);
  write(RTC.CENTURY, 0x19);
  clock.now += 10_000;
  assert.equal(read(RTC.SECONDS), 0x30, 'frozen while SET');
  write(RTC.REG_B, REG_B.HOURS_24);
  clock.now += 31_000;
  // 1999-12-31 08:15:30 + 31 s
  assert.equal(read(RTC.SECONDS), 0x01);
  assert.equal(read(RTC.MINUTES), 0x16);
  assert.equal(read(RTC.HOURS), 0x08);
  assert.equal(read(RTC.YEAR), 0x99);
  assert.equal(read(RTC.CENTURY), 0x19);
  assert.equal(read(RTC.DAY_OF_WEEK), 6); // a Friday
});

test('writing one time register while running moves the clock', () => {
  const { read, write } = setup();
  write(RTC.MINUTES, 0x10);
  assert.equal(read(RTC.MINUTES), 0x10);
  assert.equal(read(RTC.HOURS), 0x13);
  assert.equal(read(RTC.SECONDS), 0x56);
});

test('nonsense BCD from the guest does not break the clock', () => {
  const { read, write } = setup();
  write(RTC.REG_B, REG_B.SET | REG_B.HOURS_24);
  for (const reg of [RTC.SECONDS, RTC.MINUTES, RTC.HOURS, RTC.DAY_OF_MONTH, RTC.MONTH, RTC.YEAR, RTC.CENTURY]) write(reg, 0xff);
  write(RTC.REG_B, REG_B.HOURS_24);
  const v = read(RTC.SECONDS);
  assert.ok(v >= 0 && v <= 0x59);
});

test('UIP is set only in the 244 µs before an update', () => {
  const { clock, read } = setup(Date.UTC(2024, 0, 1, 0, 0, 0, 999) + 0.9);
  assert.equal(read(RTC.REG_A) & REG_A_UIP, REG_A_UIP);
  clock.now = Date.UTC(2024, 0, 1, 0, 0, 0, 500);
  assert.equal(read(RTC.REG_A), 0x26);
});

test('register C reports update, periodic and alarm flags once, then reads clear', () => {
  const { clock, read, write } = setup(Date.UTC(2024, 0, 1, 10, 0, 0, 100));
  assert.equal(read(RTC.REG_C), 0);
  clock.now += 1000;
  assert.equal(read(RTC.REG_C), REG_C.UF | REG_C.PF);
  assert.equal(read(RTC.REG_C), 0, 'read clears');
  write(RTC.REG_B, REG_B.HOURS_24 | REG_B.UIE);
  clock.now += 1000;
  assert.equal(read(RTC.REG_C), REG_C.IRQF | REG_C.UF | REG_C.PF);
  // Alarm at 10:00:05, checked in the seconds that passed since the last read.
  write(RTC.SECONDS_ALARM, 0x05);
  write(RTC.MINUTES_ALARM, 0xc0); // don't care
  write(RTC.HOURS_ALARM, 0x10);
  write(RTC.REG_B, REG_B.HOURS_24 | REG_B.AIE);
  read(RTC.REG_C);
  clock.now += 4000;
  assert.equal(read(RTC.REG_C), REG_C.IRQF | REG_C.AF | REG_C.UF | REG_C.PF);
  // No periodic flag when the rate is 0.
  write(RTC.REG_A, 0x20);
  clock.now += 1000;
  assert.equal(read(RTC.REG_C) & REG_C.PF, 0);
});

test('register D reads valid RAM and time; C and D ignore writes', () => {
  const { read, write } = setup();
  write(RTC.REG_D, 0);
  write(RTC.REG_C, 0xff);
  assert.equal(read(RTC.REG_D), 0x80);
  assert.equal(read(RTC.REG_C) & 0x0f, 0);
});

test('memory size, CPU count and checksum bytes match what firmware reads', () => {
  const { cmos, read } = setup();
  cmos.setMemoryLayout({ lowRamBytes: 256 * 1024 * 1024, highRamBytes: 0, cpus: 2 });
  const word = (at: number) => read(at) | (read(at + 1) << 8);
  assert.equal(word(0x15), 640);
  assert.equal(word(0x17), 0xffff);
  assert.equal(word(0x30), 0xffff);
  assert.equal(word(0x34), (256 - 16) * 16); // 64 KiB units above 16 MiB
  assert.deepEqual([read(0x5b), read(0x5c), read(0x5d)], [0, 0, 0]);
  assert.equal(read(0x5f), 1);
  let sum = 0;
  for (let i = 0x10; i <= 0x2d; i++) sum += read(i);
  assert.equal((read(0x2e) << 8) | read(0x2f), sum);

  cmos.setMemoryLayout({ lowRamBytes: 3 * 1024 ** 3, highRamBytes: 5 * 1024 ** 3, cpus: 1 });
  assert.equal(word(0x34), (3 * 1024 - 16) * 16);
  const above4g = read(0x5b) | (read(0x5c) << 8) | (read(0x5d) << 16);
  assert.equal(above4g, (5 * 1024 ** 3) / 65536);
  assert.equal(read(0x5f), 0);

  const small = setup();
  small.cmos.setMemoryLayout({ lowRamBytes: 8 * 1024 * 1024, highRamBytes: 0, cpus: 1 });
  assert.equal(small.read(0x17) | (small.read(0x18) << 8), 7 * 1024);
  assert.equal(small.read(0x34) | (small.read(0x35) << 8), 0);
});

test('random port traffic never throws and keeps the registers sane (seeded)', () => {
  let x = 0x1234567;
  const next = () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
  const { cmos, clock } = setup();
  for (let i = 0; i < 50000; i++) {
    clock.now += next() % 3000;
    const port = next() % 2;
    const size = [1, 2, 4][next() % 3];
    if (next() % 2) cmos.write(port, size, next());
    else {
      const v = cmos.read(port, size);
      assert.ok(Number.isInteger(v) && v >= 0 && v < 2 ** (8 * size));
    }
  }
  cmos.write(INDEX, 1, RTC.REG_D);
  assert.equal(cmos.read(DATA, 1), 0x80);
  assert.ok(cmos.selectedIndex < 0x80);
});
