// Imported first by vm-process.ts: the machine thread loads its modules while this process loads
// the rest of its own and waits for the manager's config.
import { prewarmMachineThread } from '../vmm/host/machine-prewarm';

prewarmMachineThread();
