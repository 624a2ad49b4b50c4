// L1's side of host USB passthrough into an L2 kit, shared by the usb-passthrough-l2 scenario
// and the usb-passthrough bench (test/bench/usb-passthrough.ts): finding stick0 in L1, driving
// `porthole usb add/remove` over a VM's monitor socket, and QEMU usb-host's arguments for it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { sysfsUsbDevices, until, type SysfsUsbDevice } from './l1-usb';
import { l1ProjectDir } from './paths';
import type { StickSpec } from './sticks';

/** Kernel modules the L2 kit loads to see a passed-through stick. */
export const PASSTHROUGH_KIT_MODULES = 'xhci_pci,usb_storage,sd_mod';

/** The porthole CLI inside L1. */
export const l1PortholeCli = (): string => `${l1ProjectDir}/bin/porthole`;

/** The stick's USB device in L1 once L1's usb-storage has it. */
export function stickBoundInL1(stick: StickSpec, timeoutMs = 60000): Promise<SysfsUsbDevice> {
  return until(`${stick.label} in L1's sysfs with usb-storage bound`, timeoutMs, () =>
    sysfsUsbDevices().find((d) => d.serial === stick.serial && d.drivers.includes('usb-storage')) ?? null);
}

/** Runs the porthole CLI; throws naming the command and its output when it fails. Returns stdout. */
export function runPortholeCli(args: string[], env: NodeJS.ProcessEnv = process.env, log?: (line: string) => void): string {
  const r = spawnSync(process.execPath, [l1PortholeCli(), ...args], { encoding: 'utf8', env, timeout: 60000 });
  if (r.status !== 0) throw new Error(`porthole ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  if (r.stderr.trim()) log?.(`porthole ${args[0]} ${args[1]}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** `porthole usb add host:NAME` into the VM behind `socket`; returns the guest port it printed. */
export function passStickThrough(hostName: string, socket: string, env: NodeJS.ProcessEnv, log?: (line: string) => void): { port: string; printed: string } {
  const printed = runPortholeCli(['usb', 'add', `host:${hostName}`, '--monitor', socket], env, log);
  const port = /^\s*(\d+)/m.exec(printed)?.[1];
  if (port === undefined) throw new Error(`porthole usb add printed no port: ${printed}`);
  return { port, printed };
}

/** QEMU arguments that pass L1's USB device `hostName` (bus-port name) to an L2 behind qemu-xhci. */
export function qemuUsbHostArgs(hostName: string): string[] {
  const bus = fs.readFileSync(`/sys/bus/usb/devices/${hostName}/busnum`, 'utf8').trim();
  const addr = fs.readFileSync(`/sys/bus/usb/devices/${hostName}/devnum`, 'utf8').trim();
  return ['-device', 'qemu-xhci,id=xhci', '-device', `usb-host,bus=xhci.0,hostbus=${bus},hostaddr=${addr}`];
}
