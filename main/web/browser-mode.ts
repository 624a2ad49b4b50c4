// Browser mode: the manager in plain Node plus the web server; prints the URL to open.
// Usage: node dist/main/web/browser-mode.js [--port N]
import { libraryDir } from '../manager/library';
import { APP_ROOT, RENDERER_DIR, appVersion, dataDir } from '../manager/app-paths';
import { VmManager } from '../manager/manager';
import { nodeVmProcessLauncher } from '../manager/process-launcher';
import { startWebServer } from './server';
import { UsbJournal } from '../host/usb-journal';

function parsePort(argv: string[]): number {
  const i = argv.indexOf('--port');
  if (i < 0) return Number(process.env.PORTHOLE_PORT ?? 0);
  const text = argv[i + 1] ?? '';
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535) {
    console.error(`porthole: --port needs a TCP port number (0 to 65535), not "${text}".`);
    process.exit(2);
  }
  return port;
}

async function main(): Promise<void> {
  const port = parsePort(process.argv.slice(2));
  const manager = new VmManager({
    libraryDir: libraryDir(), launcher: nodeVmProcessLauncher(), mode: 'browser', appVersion: appVersion(),
    usbJournal: new UsbJournal(dataDir()),
  });
  manager.load();
  const server = await startWebServer({ backend: manager, rendererDir: RENDERER_DIR, port });
  console.log(`Porthole is running in browser mode: open ${server.url}`);
  console.log(`(VM library: ${manager.library.dir}; app: ${APP_ROOT}; press Ctrl+C to stop the VMs and quit)`);
  let quitting = false;
  const quit = (signal: string) => {
    if (quitting) {
      console.log('porthole: forcing off the VMs');
      void manager.shutdownAll('force-off').finally(() => process.exit(1));
      return;
    }
    quitting = true;
    const running = manager.activeVms().length;
    console.log(`porthole: ${signal}: ${running ? `stopping ${running} VM${running === 1 ? '' : 's'} (again to force off)` : 'quitting'}`);
    void manager.shutdownAll('stop').then(() => server.close()).finally(() => process.exit(0));
  };
  process.on('SIGINT', () => quit('SIGINT'));
  process.on('SIGTERM', () => quit('SIGTERM'));
}

main().catch((e: NodeJS.ErrnoException) => {
  const message = e.code === 'EADDRINUSE'
    ? 'the port is already in use on 127.0.0.1; pick another with --port.'
    : e.code === 'EACCES' ? 'this user may not listen on that port; pick one above 1023 with --port.' : e.message;
  console.error(`porthole: ${message}`);
  process.exit(1);
});
