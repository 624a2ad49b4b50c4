import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VmHost } from '../../main/vmm/host/vm-host';
import { openTerminal, waitFor, type Terminal } from '../helpers/uart';
import { flatConfig, kvmSkipReason } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const BANNER = 'porthole echo ready\r\n';

test('COM1 on a pty backend: a terminal on /dev/pts/N gets the guest output and talks to the guest', { skip }, async () => {
  const config = flatConfig('echo');
  config.serial = [{ kind: 'pty' }, { kind: 'none' }, { kind: 'none' }, { kind: 'none' }];
  const host = new VmHost(config);
  let terminal: Terminal | null = null;
  let ptyPath = '';
  host.on('endpoint', (port, description) => {
    if (port !== 0) return;
    ptyPath = description;
    terminal = openTerminal(description);
  });
  await host.start();
  try {
    assert.match(ptyPath, /^\/dev\/pts\/\d+$/);
    const term = terminal as unknown as Terminal;
    await waitFor(() => term.received.toString('latin1') === BANNER, () => `the banner on ${ptyPath}; got ${JSON.stringify(term.received.toString('latin1'))}`, 30000);
    term.write(Buffer.from('typed at the terminal\r'));
    const expected = `${BANNER}typed at the terminal\r`;
    await waitFor(() => term.received.toString('latin1') === expected, () => `the echo; got ${JSON.stringify(term.received.toString('latin1'))}`, 30000);
  } finally {
    await host.stop();
    (terminal as Terminal | null)?.close();
  }
});
