// USB hot-plug through the real path on KVM: the VM host's request crosses the channel to the
// machine thread, the xHCI model plugs a stick into port 1 and unplugs it, and a flat guest
// that watches PORTSC through the xHCI's BAR sees the connect (SuperSpeed, CSC set) and the
// disconnect. A missing image is refused by the machine with nothing plugged in.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { VmHost } from '../../main/vmm/host/vm-host';
import { flatConfig, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const DEBUGCON = 4;

/** Resolves once the debug console's output so far matches `pattern`. */
function outputMatches(host: VmHost, pattern: RegExp, seen: { text: string }): Promise<void> {
  return new Promise((resolve) => {
    if (pattern.test(seen.text)) return resolve();
    const onOutput = (ring: number, data: Uint8Array) => {
      if (ring !== DEBUGCON) return;
      seen.text += Buffer.from(data).toString('latin1');
      if (pattern.test(seen.text)) {
        host.off('output', onOutput);
        resolve();
      }
    };
    host.on('output', onOutput);
  });
}

test('a stick plugged in and out while the guest runs: the guest sees connect and disconnect on port 1', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-hotplug-'));
  try {
    const stick = path.join(dir, 'stick.img');
    fs.writeFileSync(stick, Buffer.alloc(1024 * 1024));
    const steps: string[] = [];
    let plugging: Promise<void> = Promise.resolve();
    const r = await runVm(flatConfig('usb-hotplug', { usb: { controller: 'xhci', devices: [] } }), {
      timeoutMs: 60_000,
      onStart: (host) => {
        const seen = { text: '' };
        host.on('output', (ring, data) => { if (ring === DEBUGCON) seen.text += Buffer.from(data).toString('latin1'); });
        plugging = (async () => {
          await outputMatches(host, /ready\n/, seen);
          await assert.rejects(host.attachUsb({ kind: 'storage', path: path.join(dir, 'missing.img'), readOnly: false }), {
            code: 'not-found', message: `disk image ${path.join(dir, 'missing.img')}: it does not exist`,
          });
          const port = await host.attachUsb({ kind: 'storage', path: stick, readOnly: false });
          assert.equal(port.port, 1);
          assert.equal(port.device?.speed, 'super');
          steps.push('attached');
          await outputMatches(host, /connect 4/, seen);
          const ports = await host.usbPorts();
          assert.deepEqual(ports.filter((p) => p.device).map((p) => [p.port, p.device!.kind, p.device!.path]), [[1, 'storage', stick]]);
          await host.detachUsb(1);
          steps.push('detached');
        })();
        plugging.catch(() => void host.stop());
      },
    });
    await plugging;
    assert.deepEqual(steps, ['attached', 'detached']);
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 1 }, r.output[DEBUGCON]);
    assert.equal(r.output[DEBUGCON], 'ready\nconnect 4+csc\ndisconnect\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
