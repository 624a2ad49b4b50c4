// The stats-stream bench's subscriber: a child process in the manager's place. It takes the VM
// process's samples over the same IPC (advanced serialization), packed or as objects, and turns
// each into the API's vm-stats event text, as the manager does for a WebSocket watcher.
import { StatsUnpacker } from '../../main/manager/stats-wire';
import type { StatsSample } from '../../main/vmm/shared/stats';

let events = 0;
let bytes = 0;
const unpacker = new StatsUnpacker();
process.on('message', (m: { type: string; sample?: unknown }) => {
  if (m.type === 'stats' || m.type === 'stats-packed') {
    const sample = m.type === 'stats' ? m.sample as StatsSample : unpacker.unpack(m.sample);
    if (sample === null) throw new Error('the subscriber got a packed sample it cannot read');
    bytes += JSON.stringify({ type: 'vm-stats', subscription: 'bench', event: { type: 'vm-stats', id: 'bench', sample } }).length;
    events++;
  } else if (m.type === 'report') {
    process.send?.({ type: 'report', events, bytes, cpuUs: process.cpuUsage() });
  } else if (m.type === 'quit') {
    process.exit(0);
  }
});
