// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// USB capture through the API, end to end: a real VM process boots SeaBIOS from a USB stick on
// our xHCI (SeaBIOS's own xHCI and mass-storage drivers), and a browser client over the web API
// watches its transfers (watchUsbTransfers) and captures them to a pcapng file
// (startUsbCapture). The stream must show SeaBIOS's GET_DESCRIPTOR and a READ(10) command
// block; Debian's tshark must decode the READ(10) inside USB Mass Storage in the file.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import type { UsbTransferRecord, VmSpec } from '../../main/api/contract';
import { createWebClient, type SocketLike, type WebClient } from '../../main/api/web-client';
import { VmManager } from '../../main/manager/manager';
import { nodeVmProcessLauncher } from '../../main/manager/process-launcher';
import { startWebServer, type WebServer } from '../../main/web/server';
import { tempConfigHome, waitFor } from '../helpers/manager';
import { guest, kvmSkipReason } from '../helpers/vm';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);

let config: ReturnType<typeof tempConfigHome>;
let manager: VmManager;
let server: WebServer;
let client: WebClient;

before(async () => {
  if (skip) return;
  config = tempConfigHome();
  const rendererDir = fs.mkdtempSync(path.join(config.home, 'renderer-'));
  fs.writeFileSync(path.join(rendererDir, 'index.html'), '<!doctype html><title>Porthole</title>');
  manager = new VmManager({
    libraryDir: config.libraryDir, launcher: nodeVmProcessLauncher(), mode: 'browser', appVersion: 'test', log: () => undefined,
  });
  manager.load();
  server = await startWebServer({ backend: manager, rendererDir, log: () => undefined });
  client = createWebClient({
    baseUrl: `http://127.0.0.1:${server.port}`, token: server.token, openSocket: (url) => new WebSocket(url) as unknown as SocketLike, reconnectMs: 50,
  });
});

after(async () => {
  if (skip) return;
  client.close();
  await manager.shutdownAll('force-off');
  await server.close();
  config.cleanup();
});

test('SeaBIOS booting from a USB stick: watchUsbTransfers streams its transfers and startUsbCapture writes pcapng that tshark decodes', { skip }, async () => {
  const stick = path.join(config.home, 'stick.img');
  const image = Buffer.alloc(4 * 1024 * 1024);
  fs.readFileSync(guest('usb-boot')).copy(image, 0);
  image.write('PORTHOLE-USB-LBA1', 512, 'latin1');
  fs.writeFileSync(stick, image);
  const spec: VmSpec = {
    name: 'usb capture', memoryMiB: 256, cpus: 1, boot: { kind: 'firmware', firmware: '', disks: [], cdrom: '', optionRoms: [] },
    serial: ['none', 'none', 'none', 'none'], debugExit: true,
    usb: { controller: 'xhci', devices: [{ kind: 'storage', path: stick, readOnly: false }] },
  };
  const vm = await client.createVm(spec);
  const records: UsbTransferRecord[] = [];
  let dropped = 0;
  // Watching before the start: the VM process starts streaming once its machine runs.
  const unwatch = await client.watchUsbTransfers(vm.id, (e) => {
    assert.equal(e.id, vm.id);
    records.push(...e.records);
    dropped += e.dropped;
  });
  await client.startVm(vm.id);
  const file = path.join(config.home, 'seabios.pcapng');
  let capture;
  try {
    capture = await client.startUsbCapture(vm.id, { path: file });
  } catch (e) {
    // SeaBIOS may have finished already on a fast host: that is no capture at all, a failure.
    throw new Error(`startUsbCapture: ${(e as Error).message}`);
  }
  assert.deepEqual({ path: capture.path, port: capture.port }, { path: file, port: null });
  // The guest powers off after reading sector 1 from the stick; the VM's end closes the capture.
  await waitFor(() => manager.getVm(vm.id).state === 'stopped', 120000, () => `the VM is ${manager.getVm(vm.id).state}; ${records.length} records`);
  await waitFor(() => records.some((r) => r.data.startsWith('55534243') && r.data.slice(30, 32) === '28'), 10000,
    () => `no READ(10) command block in ${records.length} streamed records (${dropped} dropped): ${JSON.stringify(records.slice(-6))}`);
  unwatch();

  const descriptor = records.find((r) => r.setup?.text.startsWith('GET_DESCRIPTOR device'));
  assert.ok(descriptor, `SeaBIOS's GET_DESCRIPTOR is in the stream: ${JSON.stringify(records.slice(0, 4))}`);
  assert.deepEqual([descriptor.event, descriptor.endpoint, descriptor.direction, descriptor.type, descriptor.status], ['submit', 0, 'in', 'control', 'submitted']);
  const cbw = records.find((r) => r.data.startsWith('55534243'))!;
  assert.deepEqual([cbw.direction, cbw.type, cbw.length, cbw.port, cbw.event], ['out', 'bulk', 31, 1, 'submit']);
  for (const s of records.filter((r) => r.event === 'submit' && r.type === 'bulk')) {
    assert.ok(records.some((c) => c.event === 'complete' && c.id === s.id && c.port === s.port), `transfer ${s.id} completes`);
  }

  const lbas = execFileSync('tshark', ['-r', file, '-Y', 'usbms.dCBWSignature && scsi_sbc.opcode == 0x28', '-T', 'fields', '-e', 'scsi_sbc.rdwr10.lba'], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
  }).trim().split('\n').filter((l) => l !== '').map(Number);
  assert.ok(lbas.includes(1), `tshark finds SeaBIOS's READ(10) of sector 1 in USB Mass Storage (LBAs ${JSON.stringify(lbas)})`);
});
