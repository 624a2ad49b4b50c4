// The side of a rig scenario that runs inside L1 (started by /init with the host's node).
// A scenario's body returns a one-line detail for PASS or throws for FAIL; this prints the
// RIG-RESULT line the runner waits for and kills every process the scenario started.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { RigImage } from './build-image';
import { SerialConsole } from './console';
import { ControlClient, findControlPort, type ControlMessage } from './control';
import type { PluggableDevice } from './devices';

export interface KitFiles {
  kernelRelease: string;
  vmlinuz: string;
  initrd: string;
}

/** What a scenario may ask of the rig host, over the control channel. */
export interface RigHost {
  /** Any QMP command on L1's QEMU; resolves with its "return" value. */
  qmp(execute: string, args?: Record<string, unknown>): Promise<unknown>;
  /** Unplugs one of this run's devices (stick0, kbd0, serial0, audio0, fatstick, nic0 ...) and waits until QEMU has. */
  unplug(id: string): Promise<string>;
  /**
   * Plugs a device in: again as it was (same port and properties), as another driver on the
   * same port (a stick that re-enumerates with another product ID), or a new device.
   */
  plug(id: string, driver?: string, props?: Record<string, string | number | boolean>): Promise<string>;
  /** The devices of this run that can be unplugged and plugged, with their properties. */
  devices(): Promise<PluggableDevice[]>;
  /** Files QEMU writes on the rig host (usb-audio.wav ...), by name, as L1 paths under /rig-out. */
  hostFiles(): Promise<Record<string, string>>;
  /** Chromium on the rig host (needs the rigNet device): a Playwright endpoint for chromium.connect(). */
  browser(): Promise<string>;
  /** Forwards 127.0.0.1:port on the rig host to L1's rigNet address, same port (needs rigNet). */
  forward(port: number): Promise<string>;
  /** Sends a message to the runner that needs no answer (test events). */
  send(message: ControlMessage): Promise<void>;
}

export interface ScenarioContext {
  name: string;
  /** The rig host's side: QMP plugging and the runner's files. */
  rig: RigHost;
  /** Where a scenario may leave files that land on the rig host (build/rig/out/<run>/). */
  outDir: string;
  /** The L2 kit as L1 sees it. */
  kit: KitFiles;
  log(message: string): void;
  /** Starts a process in its own process group, killed when the scenario ends. */
  spawn(command: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /** Runs a command synchronously and returns its stdout, or throws naming it. */
  exec(command: string, args: string[]): string;
}

const RESULT_FILE = '/run/rig-result';

function readKit(): KitFiles {
  const dir = process.env.RIG_KIT_DIR;
  if (!dir) throw new Error('RIG_KIT_DIR is not set: scenarios run inside L1 (npm run rig -- NAME)');
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as RigImage;
  // The manifest holds host paths; the files sit beside it in L1's view of the project.
  return {
    kernelRelease: manifest.kernelRelease,
    vmlinuz: path.join(dir, path.basename(manifest.vmlinuz)),
    initrd: path.join(dir, path.basename(manifest.kitInitrd)),
  };
}

function rigHost(): { host: RigHost; close(): Promise<void> } {
  const port = findControlPort();
  const client = port ? new ControlClient(port) : null;
  const need = (): ControlClient => {
    if (!client) throw new Error('L1 has no rig control port (virtio_console and the runner\'s virtserialport); this needs npm run rig');
    return client;
  };
  return {
    host: {
      qmp: (execute, args) => need().request('qmp', { execute, arguments: args }),
      unplug: (id) => need().request<string>('unplug', { device: id }),
      plug: (id, driver, props) => need().request<string>('plug', { device: id, driver, props }),
      devices: () => need().request<PluggableDevice[]>('devices'),
      hostFiles: () => need().request<Record<string, string>>('host-files'),
      browser: () => need().request<string>('browser', {}, 120000),
      forward: (port) => need().request<string>('forward', { port }),
      send: (m) => need().send(m),
    },
    close: () => client?.close() ?? Promise.resolve(),
  };
}

export function scenario(name: string, body: (ctx: ScenarioContext) => Promise<string>): void {
  const children = new Set<ChildProcess>();
  const rig = rigHost();
  const ctx: ScenarioContext = {
    name,
    rig: rig.host,
    outDir: '/rig-out',
    kit: undefined as unknown as KitFiles,
    log: (m) => { for (const l of m.split('\n')) process.stdout.write(`[${name}] ${l}\n`); },
    spawn: (command, args, opts = {}) => {
      const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], ...opts, detached: true });
      children.add(child);
      child.on('exit', () => children.delete(child));
      return child;
    },
    exec: (command, args) => {
      const r = spawnSync(command, args, { encoding: 'utf8' });
      if (r.error) throw new Error(`${command}: ${r.error.message}`);
      if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with status ${r.status}: ${(r.stderr || r.stdout).trim()}`);
      return r.stdout;
    },
  };
  const finish = (pass: boolean, detail: string) => {
    for (const c of children) {
      try { if (c.pid) process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ }
    }
    const line = `RIG-RESULT: ${pass ? 'PASS' : 'FAIL'} ${detail.replace(/\s*\n\s*/g, ' | ')}`;
    try { fs.writeFileSync(RESULT_FILE, line + '\n'); } catch { /* not in L1: the line is enough */ }
    void rig.close().then(() => process.stdout.write(line + '\n', () => process.exit(pass ? 0 : 1)));
  };
  (async () => {
    ctx.kit = readKit();
    return body(ctx);
  })().then(
    (detail) => finish(true, detail),
    (e: Error) => {
      ctx.log(`error: ${e.stack ?? e.message}`);
      finish(false, e.message);
    },
  );
}

/** Streams a console's output into the L1 log as lines prefixed with `prefix`. */
export function consoleLogger(prefix: string): (text: string) => void {
  let partial = '';
  return (text) => {
    // Drop CRs and the terminal queries (ESC [ 6 n) busybox's line editor sends.
    partial += text.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      process.stdout.write(`${prefix}${partial.slice(0, nl)}\n`);
      partial = partial.slice(nl + 1);
    }
  };
}

/**
 * The checks every "boot the L2 kit" scenario makes over its console: the kernel release,
 * the CPU count and the PCI devices the guest's kernel found.
 */
export async function kitChecks(ctx: ScenarioContext, con: SerialConsole, expectCpus: number, bootTimeoutMs: number): Promise<string> {
  const t0 = Date.now();
  await con.waitForShell(bootTimeoutMs);
  const shellSec = (Date.now() - t0) / 1000;
  ctx.log(`L2 shell answered after ${shellSec.toFixed(1)} s`);
  const uname = (await con.runOk('uname -r')).trim();
  const cpus = (await con.runOk('cat /proc/cpuinfo | grep -c processor')).trim();
  const lspci = (await con.runOk('lspci -nn')).trim();
  ctx.log(`uname -r: ${uname}`);
  ctx.log(`cat /proc/cpuinfo | grep -c processor: ${cpus}`);
  ctx.log(`lspci -nn:\n${lspci}`);
  if (uname !== ctx.kit.kernelRelease) throw new Error(`L2 runs kernel "${uname}", expected the kit's ${ctx.kit.kernelRelease}`);
  if (Number(cpus) !== expectCpus) throw new Error(`L2 counts ${cpus} processors, expected ${expectCpus}`);
  const devices = lspci.split('\n').filter((l) => /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] .*\[[0-9a-f]{4}\]: Device \[[0-9a-f]{4}:[0-9a-f]{4}\]/.test(l));
  if (devices.length === 0) throw new Error('lspci -nn in L2 lists no PCI device');
  return `L2 shell after ${shellSec.toFixed(1)} s; uname -r ${uname}; ${cpus} processors; ${devices.length} PCI devices`;
}
