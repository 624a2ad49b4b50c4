// rig-tcg: single (in the rig on QEMU 10's multi-threaded TCG its interrupt-driven sender lost a THRE interrupt once in 13 L1s; test/rig/README.md, "Which QEMU")
// A guest that writes as fast as LSR allows to a real tty (the device backend on a PTY
// slave, the test holding the master) whose reader stops for a while: the guest must be
// held back (busy transmitter), not have its output dropped, and every byte must arrive.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { libc } from '../../native';
import { VmHost } from '../../main/vmm/host/vm-host';
import { waitFor } from '../helpers/uart';
import { flatConfig, kvmSkipReason } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const PHASE_BYTES = 98304; // SERIAL_FLOOD_BYTES in test/guests/serial-flood.inc
const pattern = Buffer.from(Array.from({ length: PHASE_BYTES }, (_, i) => i & 0xff));
const floodExpected = Buffer.concat([Buffer.from('serial-flood:byte\n'), pattern, Buffer.from('serial-flood:fifo\n'), pattern]);

/**
 * Runs `guestName` with COM1 on the device backend over a PTY whose master nobody reads
 * until the guest's output has stalled, then reads it all.
 */
async function stallThenRead(guestName: string, expected: Buffer, opts: { untilAsleep?: boolean } = {}): Promise<void> {
  const pty = libc.openPty(libc.O_NONBLOCK);
  const config = flatConfig(guestName);
  config.serial = [{ kind: 'device', path: pty.path }, { kind: 'none' }, { kind: 'none' }, { kind: 'none' }];
  const host = new VmHost(config);
  let emitted = 0;
  host.on('output', (ring, data) => { if (ring === 0) emitted += data.length; });
  await host.start();
  let received = Buffer.alloc(0);
  try {
    // Nobody reads the master: the PTY (~20 KB) and the backend's queue fill, the host
    // stops draining the ring, the ring (64 KiB) fills, and THRE stays 0.
    let last = -1;
    let unchangedSince = Date.now();
    await waitFor(() => {
      if (emitted !== last) {
        last = emitted;
        unchangedSince = Date.now();
      }
      // The host drains every 2 ms while bytes flow, so half a second without a change is a stall.
      return emitted > 64 * 1024 && Date.now() - unchangedSince > 500;
    }, () => `the output to stall; ${emitted} bytes so far`, 120000);
    assert.ok(emitted < expected.length, `the guest was held back at ${emitted} of ${expected.length} bytes`);
    if (opts.untilAsleep) {
      // An interrupt-driven guest goes on filling the ring, then sleeps in HLT waiting for
      // THRE: its exit count stops. From here only the host's kick after draining the
      // full ring can let the UART raise THRE (nothing else leaves KVM_RUN).
      let exits = -1;
      let unchanged = 0;
      const started = Date.now();
      while (unchanged < 5) {
        if (Date.now() - started > 120000) throw new Error(`the guest never went to sleep (${exits} exits)`);
        await new Promise((resolve) => setTimeout(resolve, 100));
        const io = (await host.stats()).exits.io ?? 0;
        unchanged = io === exits ? unchanged + 1 : 0;
        exits = io;
      }
    }
    const heldAt = emitted;
    const buf = Buffer.alloc(65536);
    await waitFor(() => {
      for (;;) {
        const n = libc.read(pty.fd, buf);
        if (n <= 0) break;
        received = Buffer.concat([received, buf.subarray(0, n)]);
      }
      return received.length >= expected.length;
    }, () => `all bytes; got ${received.length} of ${expected.length}`, 120000);
    assert.equal(received.length, expected.length);
    assert.ok(received.equals(expected), 'every byte arrived, in order');
    assert.ok(emitted > heldAt, 'the guest went on once the reader came back');
  } finally {
    await host.stop();
    libc.close(pty.fd);
  }
}

test('a stalled reader holds a polling guest back through the ring and THRE; nothing is lost', { skip }, async () => {
  await stallThenRead('serial-flood', floodExpected);
});

test('an interrupt-driven sender sleeping on a full ring gets its THRE interrupt once the host drains', { skip }, async () => {
  const bytes = 196608; // SERIAL_IRQ_FLOOD_BYTES in test/guests/serial-irq-flood.asm
  const data = Buffer.from(Array.from({ length: bytes }, (_, i) => i & 0xff));
  await stallThenRead('serial-irq-flood', Buffer.concat([Buffer.from('serial-irq-flood\n'), data]), { untilAsleep: true });
});
