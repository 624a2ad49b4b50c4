// L1's /dev/kvm works (KVM on TCG's emulated SVM): Porthole's native layer opens it and
// creates a VM, and Porthole's VMM runs the flat test guest there to its isa-debug-exit.
import fs from 'node:fs';
import { KVM_CAP, KvmSystem, libc } from '../../../native';
import { flatConfig, guest, runVm } from '../../helpers/vm';
import { scenario } from '../scenario';

scenario('l1-kvm', async (ctx) => {
  const st = fs.statSync('/dev/kvm');
  if (!st.isCharacterDevice()) throw new Error('/dev/kvm is not a character device');
  const flags = /^flags\s*:(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1].split(/\s+/) ?? [];
  const npt = fs.readFileSync('/sys/module/kvm_amd/parameters/npt', 'utf8').trim();
  ctx.log(`L1 CPU: svm=${flags.includes('svm')} npt=${flags.includes('npt')}; kvm_amd npt=${npt}`);
  if (!flags.includes('svm')) throw new Error('L1\'s CPU has no svm flag');

  const kvm = new KvmSystem();
  const caps = Object.entries(KVM_CAP).map(([k, v]) => `${k}=${kvm.checkExtension(v)}`).join(' ');
  ctx.log(`KVM capabilities: ${caps}`);
  const vm = kvm.createVm();
  vm.createIrqchip();
  const vcpu = vm.createVcpu(0);
  ctx.log(`KVM_CREATE_VM fd ${vm.fd}, KVM_CREATE_VCPU fd ${vcpu}`);
  libc.close(vcpu);
  vm.close();
  kvm.close();

  const bin = guest('hello');
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: run npm run fixtures on the host first`);
  const r = await runVm(flatConfig('hello'), { timeoutMs: 120000 });
  ctx.log(`flat guest: end ${JSON.stringify(r.end)}, debug console ${JSON.stringify(r.output[4])}, exits ${JSON.stringify(r.stats.exits)}`);
  if (r.end.reason !== 'poweroff' || r.output[4] !== 'hello from the guest\n') {
    throw new Error(`the flat guest ended ${JSON.stringify(r.end)} with debug output ${JSON.stringify(r.output[4])}`);
  }
  return `/dev/kvm works in L1 (svm, kvm_amd npt=${npt}); Porthole ran the flat guest to ${JSON.stringify(r.end)}`;
});
