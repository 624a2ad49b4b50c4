import assert from 'node:assert/strict';
import { test } from 'node:test';
import { allocateRam, GuestMemory, MiB } from '../../main/vmm/memory/guest-memory';
import { apicVectors, describeIoapicPins, describePic, interruptFrames, translate } from '../../main/vmm/machine/vcpu-dump';

test('apicVectors lists the set bits of a 256-bit LAPIC register (words 16 bytes apart)', () => {
  const page = Buffer.alloc(1024);
  const ISR = 0x100;
  page.writeUInt32LE(1 << 0x10, ISR + 0 * 16); // vector 0x10
  page.writeUInt32LE(1 << 0x10, ISR + 1 * 16); // vector 0x30
  page.writeUInt32LE(1 << 0x0c, ISR + 7 * 16); // vector 0xec
  page.writeUInt32LE(0xffffffff, ISR + 8 * 16); // the next register: not part of this one
  assert.deepEqual(apicVectors(page, ISR), [0x10, 0x30, 0xec]);
});

/** Builds 4-level tables at `tables` mapping `virt` to `phys` with a 4 KiB, 2 MiB or 1 GiB page. */
function map(mem: GuestMemory, tables: number, virt: bigint, phys: number, pageLevel: 1 | 2 | 3): number {
  const P = 1n;
  const LARGE = 1n << 7n;
  let table = tables;
  let next = tables + 0x1000;
  for (let level = 4; level > pageLevel; level--) {
    const index = Number((virt >> (12n + 9n * BigInt(level - 1))) & 0x1ffn);
    mem.writeU64(table + index * 8, BigInt(next) | P);
    table = next;
    next += 0x1000;
  }
  const index = Number((virt >> (12n + 9n * BigInt(pageLevel - 1))) & 0x1ffn);
  mem.writeU64(table + index * 8, BigInt(phys) | P | (pageLevel > 1 ? LARGE : 0n));
  return tables;
}

test('translate walks 4-level paging for 4 KiB, 2 MiB and 1 GiB pages', () => {
  const mem = new GuestMemory(allocateRam(16 * MiB));
  const stack = 0xffffc90000003e60n;
  map(mem, 0x100000, stack, 0x345000, 1);
  assert.equal(translate(mem, 0x100000n, stack), 0x345e60);
  // Bits above the table address in CR3 (PCID, flags) are ignored.
  assert.equal(translate(mem, 0x100000n | 0x18n, stack), 0x345e60);

  const text = 0xffffffff81a5a1a9n;
  map(mem, 0x200000, text, 0x1a00000 & ~0x1fffff, 2);
  assert.equal(translate(mem, 0x200000n, text), 0x1a00000 + 0x5a1a9);

  const direct = 0xffff888000123456n;
  map(mem, 0x300000, direct, 0, 3);
  assert.equal(translate(mem, 0x300000n, direct), 0x123456);
});

test('translate returns null for a page that is not present or tables outside RAM', () => {
  const mem = new GuestMemory(allocateRam(16 * MiB));
  assert.equal(translate(mem, 0x100000n, 0xffffc90000003e60n), null); // empty PML4
  map(mem, 0x100000, 0xffffc90000003e60n, 0x345000, 1);
  assert.equal(translate(mem, 0x100000n, 0xffffc90000005000n), null); // neighbouring PTE empty
  assert.equal(translate(mem, 0x7fff0000n, 0xffffc90000003e60n), null); // CR3 beyond RAM
});

test('describePic reads kvm_pic_state after the chip id', () => {
  const state = Buffer.alloc(520);
  state.writeUInt32LE(0, 0);
  state[9] = 0x01; // irr: IRQ 0 requested
  state[10] = 0xfb; // imr: all masked but the cascade
  state[11] = 0x00;
  state[13] = 0x30;
  assert.equal(describePic('PIC master', state), 'PIC master: irr 0x1 imr 0xfb isr 0x0 vector base 0x30');
});

test('describeIoapicPins reads kvm_ioapic_state after the chip id: trigger, mask, remote IRR and the request bit', () => {
  const state = Buffer.alloc(520);
  state.writeUInt32LE(2, 0); // KVM_IRQCHIP_IOAPIC
  state.writeUInt32LE(1 << 4, 24); // irr: pin 4 requested
  state.writeBigUInt64LE(0x24n, 32 + 4 * 8); // pin 4: vector 0x24, edge, unmasked, to APIC 0
  state.writeBigUInt64LE((1n << 56n) | (1n << 16n) | (1n << 15n) | (1n << 14n) | 0x31n, 32 + 11 * 8); // pin 11: level, masked, remote IRR, to APIC 1
  assert.equal(describeIoapicPins(state, [4, 11]),
    'pin 4: vector 0x24 edge dest 0x0 irr 1; pin 11: vector 0x31 level masked remote-irr dest 0x1 irr 0');
});

test('interruptFrames finds the frames the CPU pushed for kernel interrupts, with the interrupted RFLAGS', () => {
  const base = 0xffffcc9ac0003e60n;
  const words = [
    0xffffffffba85a025n, 0x101n, // return addresses and data
    0xffffffffbaa00e62n, 0x0n,
    // an interrupt taken at 0xffffffff8185a1a9 with IF clear
    0xffffffffba85a1a9n, 0x10n, 0x2n, 0xffffcc9ac0003f60n, 0x18n,
    0x10n, 0x18n, // not a frame: no RIP before them
    // one taken with IF set
    0xffffffffb9e70cb0n, 0x10n, 0x246n, 0xffffcc9ac059fb68n, 0x18n,
    // one taken in a module
    0xffffffffc04b420cn, 0x10n, 0x10246n, 0xffffd19e80b2bb60n, 0x18n,
    // user CS, or RFLAGS without bit 1: not kernel interrupt frames
    0xffffffffb9e70cb0n, 0x33n, 0x246n, 0x7ffc0000n, 0x2bn,
    0xffffffffb9e70cb0n, 0x10n, 0x200n, 0xffffcc9ac059fb68n, 0x18n,
  ];
  assert.deepEqual(interruptFrames(words, base), [
    { at: base + 4n * 8n, rip: 0xffffffffba85a1a9n, rflags: 0x2n },
    { at: base + 11n * 8n, rip: 0xffffffffb9e70cb0n, rflags: 0x246n },
    { at: base + 16n * 8n, rip: 0xffffffffc04b420cn, rflags: 0x10246n },
  ]);
  assert.deepEqual(interruptFrames(words.slice(0, 8), base), [], 'a frame cut off by the end of the stack read');
});
