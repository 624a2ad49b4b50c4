// The vfio-pci model with all its wiring on (INTx irqfds, MSI-X and MSI handed to VFIO, BAR
// slots) under random guest config and PIRQ writes (BAR sizing and capability bodies included):
// never a throw, never two interrupt types on in the host at once, never overlapping slots,
// slots only where the BARs decode, everything undone by close(). npm run fuzz runs it longer.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FakeHost, FakeMsiHost, setupVfio as setup } from '../helpers/fake-vfio';

test('vfio-pci wiring fuzz: random guest config and PIRQ writes never throw, never leave INTx and MSI-X on together, never overlap slots', () => {
  const scale = Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1);
  let seed = 777;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  for (let round = 0; round < 10 * scale; round++) {
    const { platform, host, slots, device, kvm } = setup(24 + rnd(8), rnd(2) ? new FakeHost() : new FakeMsiHost());
    for (let i = 0; i < 400; i++) {
      const pick = rnd(10);
      if (pick === 0) {
        platform.isaBridge.writeConfig(0x60 + rnd(4), 1, [3, 5, 10, 11, 0x80, rnd(256)][rnd(6)]);
        continue;
      }
      const size = [1, 2, 4][rnd(3)];
      const offset = pick < 4 ? [4, 0x10, 0x1c, 0xa2, 0x18, 0x30, 0xd2, 0xd4][rnd(8)] : rnd(256 / size) * size;
      const value = rnd(3) === 0 ? 0xffffffff : (rnd(0x10000) * 0x10000 + rnd(0x10000)) >>> 0;
      device.writeConfig(offset - (offset % size), size, size === 4 ? value : value & (size === 2 ? 0xffff : 0xff));
      assert.ok([host.intx, host.msix, host.msi].filter((x) => x !== null).length <= 1, 'two interrupt types on at once');
      const live = [...slots.live.values()].sort((a, b) => a.base - b.base);
      live.forEach((s, j) => { if (j > 0) assert.ok(live[j - 1].base + live[j - 1].size <= s.base, 'slots overlap'); });
      for (const [bar, off, sz, at] of device.slotMappings) {
        assert.equal(device.barAddress(bar)! + off, at);
        assert.ok(off + sz <= host.sizes[bar]);
      }
      if (host.intx !== null) assert.equal(kvm.irqfds.get(host.intx.trigger)?.gsi, device.intxGsi);
    }
    device.close();
    assert.equal(slots.live.size, 0);
    assert.deepEqual(host.mapped, []);
  }
});
