// Flat real-mode programs: loaded at an address and entered there with CS:IP = 0:address.
// Used by test guests and benchmarks that need no firmware.
import { readFile } from 'node:fs/promises';
import type { KvmVcpu } from '../../../native';
import type { BootTarget } from './boot-target';

export async function bootFlat(machine: BootTarget, bsp: KvmVcpu, file: string, address: number): Promise<void> {
  const image = await readFile(file).catch((e: NodeJS.ErrnoException) => {
    throw new Error(`cannot read test program ${file}: ${e.code ?? e.message}`);
  });
  if (address < 0x500 || address + image.length > 0xa0000) {
    throw new Error(`test program ${file} (${image.length} bytes at 0x${address.toString(16)}) must fit in conventional memory`);
  }
  machine.memory.write(address, image);
  const sregs = bsp.getSregs();
  for (const seg of [sregs.cs, sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs]) {
    seg.base = 0n;
    seg.selector = 0;
  }
  bsp.setSregs(sregs);
  bsp.setRegs({ rip: BigInt(address), rsp: 0x7000n, rflags: 2n });
}
