// Puts the boot payload into guest memory and sets the vCPUs' starting state.
import type { KvmVcpu } from '../../../native';
import type { Machine } from '../machine';
import { bootFlat } from './flat';

export async function prepareBoot(machine: Machine, vcpus: KvmVcpu[]): Promise<void> {
  const boot = machine.config.boot;
  switch (boot.kind) {
    case 'flat':
      return bootFlat(machine, vcpus[0], boot.path, boot.address);
    case 'firmware':
      throw new Error('firmware boot is not available yet');
    case 'linux':
      throw new Error('Linux direct boot is not available yet');
  }
}
