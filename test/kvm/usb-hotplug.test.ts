// USB hot-plug through the real path on KVM: the VM host's request crosses the channel to the
// machine thread, the xHCI model plugs a stick into port 1 and unplugs it, and a flat guest
// that watches PORTSC through the xHCI's BAR sees the connect (SuperSpeed, CSC set) and the
// disconnect. A missing image is refused by the machine with nothing plugged in.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { VmHost } from '../../main/vmm/host/vm-host';
import { flatConfig, guest, kvmSkipReason, repoRoot, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const DEBUGCON = 4;

/**
 * Resolves once the debug console's output so far matches `pattern`. `output` is runVm's live
 * record, which holds what the guest printed before onStart ran too.
 */
function outputMatches(host: VmHost, pattern: RegExp, output: readonly string[]): Promise<void> {
  return new Promise((resolve) => {
    if (pattern.test(output[DEBUGCON])) return resolve();
    const onOutput = () => {
      // runVm's own listener came first, so `output` already holds this chunk.
      if (pattern.test(output[DEBUGCON])) {
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
      onStart: (host, output) => {
        plugging = (async () => {
          await outputMatches(host, /ready\n/, output);
          await assert.rejects(host.attachUsb({ kind: 'storage', path: path.join(dir, 'missing.img'), readOnly: false }), {
            code: 'not-found', message: `disk image ${path.join(dir, 'missing.img')}: it does not exist`,
          });
          const port = await host.attachUsb({ kind: 'storage', path: stick, readOnly: false });
          assert.equal(port.port, 1);
          assert.equal(port.device?.speed, 'super');
          steps.push('attached');
          await outputMatches(host, /connect 4/, output);
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

/** Resolves once `check()` holds; rejects with `describe()` after `ms`. */
async function until(check: () => boolean, ms: number, describe: () => string): Promise<void> {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > ms) throw new Error(describe());
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('from the command line: porthole run --monitor, then porthole usb add, list, remove and keys reach that VM', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-cli-'));
  const bin = path.join(repoRoot, 'bin', 'porthole');
  try {
    const stick = path.join(dir, 'stick.img');
    fs.writeFileSync(stick, Buffer.alloc(1024 * 1024));
    const sock = path.join(dir, 'vm.sock');
    const log = path.join(dir, 'debugcon.log');
    const vm = spawn(process.execPath, [bin, 'run', '--flat', guest('usb-hotplug'), '--debug-exit', '--debugcon', `file:${log}`,
      '--usb', 'keyboard', '--monitor', `unix:${sock}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    vm.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    const exited = new Promise<number | null>((resolve) => vm.once('exit', (code) => resolve(code)));
    const guestLog = () => (fs.existsSync(log) ? fs.readFileSync(log, 'latin1') : '');
    const porthole = (...args: string[]) => spawnSync(process.execPath, [bin, ...args, '--monitor', sock], { encoding: 'utf8', timeout: 30000 });
    try {
      await until(() => guestLog().includes('ready\n') && fs.existsSync(sock), 30000, () => `guest not ready: ${guestLog()} ${stderr}`);
      assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
      const add = porthole('usb', 'add', `storage:${stick}`);
      assert.deepEqual([add.status, add.stdout, add.stderr], [0, `1  usb3  1209:0001  super  USB Disk  ${stick}\n`, '']);
      await until(() => guestLog().includes('connect 4+csc\n'), 30000, () => `no connect seen: ${guestLog()}`);
      const list = porthole('usb', 'list');
      assert.equal(list.status, 0, list.stderr);
      assert.match(list.stdout, /^5  usb2  1d6b:0101  full   Porthole USB Keyboard$/m);
      // The flat guest has no USB driver: the keyboard is not configured, and keys say so.
      const keys = porthole('keys', 'ctrl+alt+Delete');
      assert.deepEqual([keys.status, keys.stderr], [1, 'porthole: The guest has not set up the USB keyboard yet (no driver has configured it).\n']);
      const remove = porthole('usb', 'remove', '1');
      assert.deepEqual([remove.status, remove.stderr], [0, '']);
      assert.equal(await exited, 1, stderr);
      assert.equal(guestLog(), 'ready\nconnect 4+csc\ndisconnect\n');
      assert.equal(fs.existsSync(sock), false, 'the socket is removed when the VM ends');
    } finally {
      vm.kill('SIGKILL');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
