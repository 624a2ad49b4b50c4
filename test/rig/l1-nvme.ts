// In L1: the rig's NVMe controller brings up an SR-IOV virtual function with nvme-cli
// (flexible queue and interrupt resources assigned, secondary controller online), the
// nvme driver takes it, and it moves to vfio-pci in an IOMMU group of its own.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ScenarioContext } from './scenario';
import { readTrim, until } from './l1-usb';

function run(ctx: Pick<ScenarioContext, 'log'>, cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  ctx.log(`$ ${cmd} ${args.join(' ')}${out ? `\n${out}` : ''}`);
  if (r.error) throw new Error(`${cmd}: ${r.error.message} (npm run fixtures installs nvme-cli on the rig host)`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}: ${out}`);
  return r.stdout;
}

const pciDriver = (bdf: string): string => {
  try { return path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${bdf}/driver`)); } catch { return '-'; }
};

export async function checkNvmeSriov(ctx: ScenarioContext): Promise<string> {
  const pf = fs.readdirSync('/sys/bus/pci/devices').find((d) => {
    try { return readTrim(`/sys/bus/pci/devices/${d}/class`).startsWith('0x0108') && fs.existsSync(`/sys/bus/pci/devices/${d}/sriov_totalvfs`); } catch { return false; }
  });
  if (!pf) throw new Error('no NVMe controller with SR-IOV in L1');
  const sys = `/sys/bus/pci/devices/${pf}`;
  const total = Number(readTrim(`${sys}/sriov_totalvfs`));
  const ctrl = await until('the NVMe PF\'s controller node', 30000, () => {
    try { return fs.readdirSync(`${sys}/nvme`)[0] ?? null; } catch { return null; }
  });
  ctx.log(`NVMe PF ${pf} (/dev/${ctrl}): sriov_totalvfs ${total}`);
  // QEMU's VFs start offline with no resources: create them without probing, assign, online.
  fs.writeFileSync(`${sys}/sriov_drivers_autoprobe`, '0');
  fs.writeFileSync(`${sys}/sriov_numvfs`, '1');
  const vf = path.basename(fs.readlinkSync(`${sys}/virtfn0`));
  const secondary = run(ctx, 'nvme', ['list-secondary', `/dev/${ctrl}`, '-o', 'json']);
  const entries = (JSON.parse(secondary) as { 'secondary-controllers'?: { 'secondary-controller-identifier'?: number; 'virtual-function-number'?: number }[] })['secondary-controllers'] ?? [];
  const scid = entries.find((e) => e['virtual-function-number'] === 1)?.['secondary-controller-identifier'];
  if (scid === undefined) throw new Error(`nvme list-secondary names no controller for VF 1: ${secondary.trim()}`);
  run(ctx, 'nvme', ['virt-mgmt', `/dev/${ctrl}`, '-c', String(scid), '-r', '1', '-a', '8', '-n', '1']);
  run(ctx, 'nvme', ['virt-mgmt', `/dev/${ctrl}`, '-c', String(scid), '-r', '0', '-a', '8', '-n', '2']);
  run(ctx, 'nvme', ['virt-mgmt', `/dev/${ctrl}`, '-c', String(scid), '-r', '0', '-a', '9', '-n', '0']);
  // The VF's controller picks its new resources up on a function reset.
  fs.writeFileSync(`/sys/bus/pci/devices/${vf}/reset`, '1');
  // With autoprobe off, a VF binds only to the driver its driver_override names.
  fs.writeFileSync(`/sys/bus/pci/devices/${vf}/driver_override`, 'nvme');
  try {
    fs.writeFileSync('/sys/bus/pci/drivers/nvme/bind', vf);
  } catch (e) {
    const dmesg = spawnSync('dmesg', [], { encoding: 'utf8' }).stdout.split('\n').filter((l) => /nvme|pci/i.test(l)).slice(-15).join('\n');
    throw new Error(`the nvme driver did not take VF ${vf} (${(e as Error).message}); dmesg:\n${dmesg}`);
  }
  const ns = await until(`a namespace behind VF ${vf}`, 60000, () => {
    try { return fs.readdirSync(`/sys/bus/pci/devices/${vf}/nvme`).length ? pciDriver(vf) : null; } catch { return null; }
  });
  ctx.log(`VF ${vf} (secondary controller ${scid}) online, driver ${ns}`);
  // Then to vfio-pci, as Porthole would take it for a guest.
  fs.writeFileSync(`/sys/bus/pci/devices/${vf}/driver_override`, 'vfio-pci');
  fs.writeFileSync(`/sys/bus/pci/devices/${vf}/driver/unbind`, vf);
  fs.writeFileSync('/sys/bus/pci/drivers_probe', vf);
  const driver = pciDriver(vf);
  const group = path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${vf}/iommu_group`));
  if (driver !== 'vfio-pci') throw new Error(`VF ${vf} bound to ${driver}, not vfio-pci`);
  if (!fs.existsSync(`/dev/vfio/${group}`)) throw new Error(`VF ${vf} is on vfio-pci but /dev/vfio/${group} is missing`);
  return `NVMe SR-IOV: VF ${vf} (secondary controller ${scid}) brought online with nvme-cli, taken by nvme, then bound to vfio-pci in IOMMU group ${group}`;
}

/**
 * Gives VF number `vfNumber` (1-based) of the PF whose controller is /dev/`ctrl` its flexible
 * resources (2 queues, 1 interrupt) and brings its secondary controller online, then resets the
 * VF so it picks them up. Returns the secondary controller's id.
 */
export function onlineNvmeVf(ctx: Pick<ScenarioContext, 'log'>, ctrl: string, vf: string, vfNumber: number): number {
  const secondary = run(ctx, 'nvme', ['list-secondary', `/dev/${ctrl}`, '-o', 'json']);
  const entries = (JSON.parse(secondary) as { 'secondary-controllers'?: { 'secondary-controller-identifier'?: number; 'virtual-function-number'?: number }[] })['secondary-controllers'] ?? [];
  const scid = entries.find((e) => e['virtual-function-number'] === vfNumber)?.['secondary-controller-identifier'];
  if (scid === undefined) throw new Error(`nvme list-secondary names no controller for VF ${vfNumber}: ${secondary.trim()}`);
  run(ctx, 'nvme', ['virt-mgmt', `/dev/${ctrl}`, '-c', String(scid), '-r', '1', '-a', '8', '-n', '1']);
  run(ctx, 'nvme', ['virt-mgmt', `/dev/${ctrl}`, '-c', String(scid), '-r', '0', '-a', '8', '-n', '2']);
  run(ctx, 'nvme', ['virt-mgmt', `/dev/${ctrl}`, '-c', String(scid), '-r', '0', '-a', '9', '-n', '0']);
  fs.writeFileSync(`/sys/bus/pci/devices/${vf}/reset`, '1');
  return scid;
}
