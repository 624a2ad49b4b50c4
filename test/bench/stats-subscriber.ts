// The stats-stream bench's subscriber: a child process in the manager's place. It takes the VM
// process's 'stats' messages over the same IPC (advanced serialization) and turns each into the
// API's vm-stats event text, as the manager does for a WebSocket watcher.
let events = 0;
let bytes = 0;
process.on('message', (m: { type: string; sample?: unknown }) => {
  if (m.type === 'stats') {
    bytes += JSON.stringify({ type: 'vm-stats', subscription: 'bench', event: { type: 'vm-stats', id: 'bench', sample: m.sample } }).length;
    events++;
  } else if (m.type === 'report') {
    process.send?.({ type: 'report', events, bytes, cpuUs: process.cpuUsage() });
  } else if (m.type === 'quit') {
    process.exit(0);
  }
});
