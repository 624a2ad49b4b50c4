// The detached unpacker kernelForBoot starts: KERNEL CACHEDIR. Low priority; exit 0 when the
// cache has the kernel, 1 with a sentence on stderr otherwise.
import os from 'node:os';
import { unpackKernelToCache } from './kernel-unpack';

async function main(): Promise<number> {
  const [kernel, cacheDir] = process.argv.slice(2);
  if (!kernel || !cacheDir) {
    process.stderr.write('usage: kernel-unpack-main KERNEL CACHEDIR\n');
    return 2;
  }
  try { os.setPriority(19); } catch { /* only a courtesy to the running VMs */ }
  try {
    process.stdout.write(`${await unpackKernelToCache(kernel, cacheDir)}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`kernel unpack: ${(e as Error).message}\n`);
    return 1;
  }
}

void main().then((code) => { process.exitCode = code; });
