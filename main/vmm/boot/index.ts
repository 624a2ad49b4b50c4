// Puts the boot payload into guest memory and sets the vCPUs' starting state.
import type { KvmVcpu } from '../../../native';
import type { BootTarget } from './boot-target';
import { bootFirmware } from './firmware';
import { bootFlat } from './flat';
import { bootLinux } from './linux';

export async function prepareBoot(machine: BootTarget, vcpus: KvmVcpu[]): Promise<void> {
  const boot = machine.config.boot;
  switch (boot.kind) {
    case 'flat':
      return bootFlat(machine, vcpus[0], boot.path, boot.address);
    case 'firmware':
      return bootFirmware(machine, vcpus);
    case 'linux':
      await bootLinux(machine, vcpus, boot);
      return;
  }
}
