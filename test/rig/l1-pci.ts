// L1's PCI side for VFIO scenarios: which driver holds a function, and ending a VM whose L2 powers off.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { SerialConsole } from './console';

/** The driver bound to L1's PCI function `address`, or null. */
export function driverOf(address: string): string | null {
  try { return path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${address}/driver`)); } catch { return null; }
}

/** How a spawned Porthole process ended: "code N" or its signal. */
export function exitOf(vm: ChildProcess): Promise<string> {
  return new Promise((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
}

/** `poweroff -f` in L2 and how Porthole ended within `timeoutMs` ("timeout" if it did not). */
export async function powerOff(con: SerialConsole, exited: Promise<string>, timeoutMs = 120000): Promise<string> {
  con.send('poweroff -f\n');
  let timer: NodeJS.Timeout | undefined;
  const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), timeoutMs); })]);
  clearTimeout(timer);
  return end;
}
