// Entry of a VM process: one VM per process, so a crashing VM takes down nothing else.
// Runs a VmHost for the config the manager sends and speaks the protocol in
// vm-process-protocol.ts over child_process IPC (Node) or the utilityProcess parent
// port (Electron).
//
// process.exit() hangs while a thread is inside KVM_RUN, so every way out stops the
// machine first; if even that hangs, the process kills itself with SIGKILL.
import './vm-process-prewarm';
import type { MachineConfig } from '../vmm/config';
import { UsbCaptureError } from '../vmm/host/usb-capture';
import { CdromRequestError } from '../vmm/shared/cdrom-messages';
import { VmHost } from '../vmm/host/vm-host';
import { UsbRequestError, type UsbRequestBody } from '../vmm/shared/usb-messages';
import { usbRulesFromJson } from '../host/usb-rules';
import { SampleForwarder } from './sample-forwarder';
import { StatsPacker } from './stats-wire';
import { TransferForwarder } from './transfer-forwarder';
import { stopAndGiveBack } from './vm-process-exit';
import { releasePrewarmedThread } from '../vmm/host/machine-prewarm';
import type { VmCaptureRequest } from './vm-process-protocol';
import {
  OUTPUT_BATCH_BYTES, OUTPUT_BATCH_MS, STATS_DEFAULT_PERIOD_MS, statsPeriodOf, type ManagerToVm, type VmCommand, type VmToManager,
} from './vm-process-protocol';

interface ElectronParentPort {
  postMessage(message: unknown): void;
  on(event: 'message', listener: (e: { data: unknown }) => void): void;
}

const parentPort = (process as unknown as { parentPort?: ElectronParentPort }).parentPort;

function send(m: VmToManager, done?: () => void): void {
  if (parentPort) {
    parentPort.postMessage(m);
    if (done) setTimeout(done, 100);
  } else if (process.send && process.connected) {
    process.send(m, undefined, {}, () => done?.());
  } else {
    done?.();
  }
}

function onMessage(listener: (m: ManagerToVm) => void): void {
  if (parentPort) parentPort.on('message', (e) => listener(e.data as ManagerToVm));
  else process.on('message', (m) => listener(m as ManagerToVm));
}

let host: VmHost | null = null;
let exiting = false;
/** Non-zero once this process failed: the manager then reports a crash, not a clean stop. */
let exitCode = 0;

/** Guest output waiting to be sent, per ring. */
const pending: Uint8Array[][] = [[], [], [], [], []];
let pendingBytes = 0;
let flushTimer: NodeJS.Timeout | null = null;

function flushOutput(): void {
  if (flushTimer) clearTimeout(flushTimer);
  flushTimer = null;
  pending.forEach((chunks, ring) => {
    if (chunks.length === 0) return;
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const data = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      data.set(c, at);
      at += c.length;
    }
    chunks.length = 0;
    send({ type: 'output', ring, data });
  });
  pendingBytes = 0;
}

function queueOutput(ring: number, data: Uint8Array): void {
  if (ring < 0 || ring >= pending.length || data.length === 0) return;
  // VmHost hands out a fresh array per drain, but copy anyway: it is cheap and safe.
  pending[ring].push(data.slice());
  pendingBytes += data.length;
  if (pendingBytes >= OUTPUT_BATCH_BYTES) flushOutput();
  else if (!flushTimer) flushTimer = setTimeout(flushOutput, OUTPUT_BATCH_MS);
}

/** Samples from the VM host: the latest is kept, and sent on while the manager wants them. */
const packer = new StatsPacker();
const samples = new SampleForwarder((sample) => send({ type: 'stats-packed', sample: packer.pack(sample) }));
/** The VM host's sampling period: faster while a watcher wants more than 4 samples a second. */
let statsPeriodMs = STATS_DEFAULT_PERIOD_MS;

/** USB transfer records for the manager's watchers, while it wants them. */
const transfers = new TransferForwarder((records, dropped) => send({ type: 'usb-transfers', records, dropped }), (line) => send({ type: 'log', line }));

function exitAfter(code: number): void {
  if (exiting) return;
  exiting = true;
  exitCode = code;
  // Last resort if the machine cannot be stopped (a thread stuck in KVM_RUN).
  setTimeout(() => process.kill(process.pid, 'SIGKILL'), 5000).unref();
  // Host USB devices go back before the process ends, as after a machine that ends by itself.
  // A machine thread started ahead and never launched must finish loading before the exit.
  void stopAndGiveBack(host).then(() => releasePrewarmedThread()).finally(() => {
    flushOutput();
    process.exit(code);
  });
}

function startVm(config: MachineConfig): void {
  if (host) {
    send({ type: 'start-failed', message: 'this VM process already runs a machine' });
    return;
  }
  const h = new VmHost(config);
  h.statsIntervalMs = statsPeriodMs;
  host = h;
  h.on('state', (state) => send({ type: 'state', state }));
  h.on('log', (line) => send({ type: 'log', line }));
  h.on('output', (ring, data) => queueOutput(ring, data));
  h.on('endpoint', (ring, description) => send({ type: 'endpoint', ring, description }));
  h.on('stats', (sample) => samples.offer(sample, performance.now()));
  h.on('ended', (end, stats) => {
    transfers.flush();
    transfers.setSource(null);
    flushOutput();
    exiting = true;
    // Host USB devices go back to the host before the process ends.
    void h.hostUsbReleased.finally(() => send({ type: 'ended', end, stats }, () => process.exit(exitCode)));
  });
  h.start().then(
    () => {
      send({ type: 'started' });
      transfers.setSource(h);
    },
    (e: Error) => {
      send({ type: 'start-failed', message: e.message });
      // When no machine was built, "ended" never comes: leave now.
      if (h.state === 'stopped' && !exiting) {
        exiting = true;
        flushOutput();
        const ended = () => send({ type: 'ended', end: { reason: 'error', message: e.message }, stats: { exits: {}, devices: [], kicks: 0, apExits: 0 } }, () => process.exit(0));
        void releasePrewarmedThread().then(ended, ended);
      }
    },
  );
}

async function runCommand(id: number, command: VmCommand): Promise<void> {
  const h = host;
  try {
    if (!h) throw new Error('the machine is not running');
    switch (command) {
      case 'stop':
        send({ type: 'reply', id, ok: true });
        await h.stop();
        return;
      case 'pause':
        h.pause();
        break;
      case 'resume':
        h.resume();
        break;
      case 'reset':
        await h.reset();
        break;
      case 'stats': {
        flushOutput();
        // The registry's totals now (shared memory, no kick) once it has counters; else ask the
        // machine. Not the stream's latest sample: that can be a whole period old.
        const sample = h.readStats();
        if (sample.counters.length > 0) send({ type: 'reply', id, ok: true, sample });
        else send({ type: 'reply', id, ok: true, stats: await h.stats() });
        return;
      }
    }
    send({ type: 'reply', id, ok: true });
  } catch (e) {
    send({ type: 'reply', id, ok: false, message: (e as Error).message });
  }
}

/** A USB request from the manager, answered with the ports after it (or why it failed). */
async function runUsb(id: number, request: UsbRequestBody | VmCaptureRequest): Promise<void> {
  const h = host;
  try {
    if (!h) throw new UsbRequestError('invalid-state', 'the machine is not running');
    switch (request?.op) {
      case 'list':
        send({ type: 'reply', id, ok: true, usb: { ports: await h.usbPorts() } });
        return;
      case 'attach': {
        const state = await h.attachUsb(request.device);
        send({ type: 'reply', id, ok: true, usb: { ports: [state], port: state.port } });
        return;
      }
      case 'attach-host': {
        const state = await h.attachHostUsb(request.device, request.port, request.force === true);
        send({ type: 'reply', id, ok: true, usb: { ports: [state], port: state.port } });
        return;
      }
      case 'detach':
        await h.detachUsb(request.port);
        send({ type: 'reply', id, ok: true, usb: { ports: [], port: request.port } });
        return;
      case 'keys':
        await h.sendUsbKeys(request.events);
        send({ type: 'reply', id, ok: true });
        return;
      case 'set-rules':
        h.setUsbRules(usbRulesFromJson(request.rules, 'rules'));
        send({ type: 'reply', id, ok: true });
        return;
      case 'capture-start':
        send({ type: 'reply', id, ok: true, capture: await h.startUsbCapture(request.options) });
        return;
      case 'capture-stop':
        send({ type: 'reply', id, ok: true, capture: await h.stopUsbCapture(request.capture) });
        return;
      case 'usb-paths':
        send({ type: 'reply', id, ok: true, usbPaths: [...h.usbPathChoicesAtStart] });
        return;
      case 'cdrom-list':
        send({ type: 'reply', id, ok: true, cdrom: await h.cdromDrives() });
        return;
      case 'cdrom-insert':
        send({ type: 'reply', id, ok: true, cdrom: await h.insertCdrom(request.path, request.drive, request.force === true) });
        return;
      case 'cdrom-eject':
        send({ type: 'reply', id, ok: true, cdrom: await h.ejectCdrom(request.drive, request.force === true) });
        return;
      default:
        throw new UsbRequestError('invalid-argument', 'unknown USB request');
    }
  } catch (e) {
    const code = e instanceof UsbRequestError || e instanceof UsbCaptureError || e instanceof CdromRequestError ? e.code : undefined;
    send({ type: 'reply', id, ok: false, message: (e as Error).message, code });
  }
}

onMessage((m) => {
  if (typeof m !== 'object' || m === null) return;
  switch (m.type) {
    case 'start':
      startVm(m.config);
      break;
    case 'command':
      void runCommand(m.id, m.command);
      break;
    case 'usb':
      void runUsb(m.id, m.request);
      break;
    case 'input':
      if (host && m.data instanceof Uint8Array) host.sendSerialInput(m.port, m.data);
      break;
    case 'stats-stream':
      samples.setStreaming(m.on === true);
      statsPeriodMs = m.on === true ? statsPeriodOf(m.periodMs) : STATS_DEFAULT_PERIOD_MS;
      host?.setStatsInterval(statsPeriodMs);
      break;
    case 'transfer-stream':
      transfers.setStreaming(m.on === true);
      break;
  }
});

process.on('uncaughtException', (e) => {
  process.stderr.write(`VM process error: ${e.stack ?? e.message}\n`);
  exitAfter(70);
});
process.on('unhandledRejection', (e) => {
  process.stderr.write(`VM process error: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  exitAfter(70);
});
// The manager went away (Node only; Electron kills utility processes with the app).
process.on('disconnect', () => exitAfter(0));

send({ type: 'ready' });
