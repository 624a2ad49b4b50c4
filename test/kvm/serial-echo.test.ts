import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VmHost } from '../../main/vmm/host/vm-host';
import { waitFor } from '../helpers/uart';
import { flatConfig, kvmSkipReason } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const BANNER = 'porthole echo ready\r\n';

async function withEchoGuest(body: (host: VmHost, output: () => string) => Promise<void>): Promise<void> {
  const host = new VmHost(flatConfig('echo'));
  let com1 = '';
  host.on('output', (ring, data) => {
    if (ring === 0) com1 += Buffer.from(data).toString('latin1');
  });
  await host.start();
  try {
    await waitFor(() => com1.includes(BANNER), () => `the banner; COM1 so far: ${JSON.stringify(com1)}`, 30000);
    assert.equal(com1, BANNER, 'the banner is the first and only output');
    await body(host, () => com1);
  } finally {
    await host.stop();
  }
}

test('the echo guest prints its banner and echoes bytes sent with sendSerialInput (IRQ 4 through the PIC)', { skip }, async () => {
  await withEchoGuest(async (host, output) => {
    host.sendSerialInput(0, Buffer.from('ping 1\r\n'));
    await waitFor(() => output() === `${BANNER}ping 1\r\n`, () => `echo so far: ${JSON.stringify(output())}`, 20000);
    host.sendSerialInput(0, Buffer.from('x'));
    host.sendSerialInput(0, Buffer.from('yz'));
    await waitFor(() => output() === `${BANNER}ping 1\r\nxyz`, () => `echo so far: ${JSON.stringify(output())}`, 20000);
    const stats = await host.stats();
    assert.ok((stats.devices.find((d) => d.name === 'COM1')?.reads ?? 0) > 0);
  });
});

test('a paste far larger than the 16-byte FIFO comes back complete and in order', { skip }, async () => {
  await withEchoGuest(async (host, output) => {
    let paste = '';
    for (let i = 0; paste.length < 3000; i++) paste += `line ${i}: all bytes 0x20..0x7e survive ${'~'.repeat(i % 17)}\r\n`;
    host.sendSerialInput(0, Buffer.from(paste, 'latin1'));
    await waitFor(() => output().length >= BANNER.length + paste.length, () => `echoed ${output().length - BANNER.length} of ${paste.length}`, 60000);
    assert.equal(output(), BANNER + paste);
  });
});

test('all 256 byte values pass through unchanged', { skip }, async () => {
  await withEchoGuest(async (host, output) => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    host.sendSerialInput(0, all);
    await waitFor(() => output().length >= BANNER.length + 256, () => `echoed ${output().length - BANNER.length} of 256`, 30000);
    assert.deepEqual(Buffer.from(output().slice(BANNER.length), 'latin1'), Buffer.from(all));
  });
});

test('a guest halted between inputs still answers every stats request: kicks served in place leave posted messages to the event loop', { skip }, async () => {
  await withEchoGuest(async (host, output) => {
    let expected = BANNER;
    for (let i = 0; i < 20; i++) {
      // The input's kick is served in the run loop; the stats request right after it is a
      // posted message, which only the machine thread's event loop can take.
      host.sendSerialInput(0, Buffer.from(String.fromCharCode(0x41 + i)));
      expected += String.fromCharCode(0x41 + i);
      const stats = await Promise.race([
        host.stats(),
        new Promise<null>((resolve) => setTimeout(() => resolve(null), 10000)),
      ]);
      assert.ok(stats !== null, `stats request ${i} was not answered within 10 s`);
      await waitFor(() => output() === expected, () => `echo so far: ${JSON.stringify(output())}`, 20000);
    }
  });
});
