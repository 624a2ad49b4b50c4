// Host ends of the guest's serial ports: stdio, files, PTYs, sockets and real devices.
import fs from 'node:fs';
import type { SerialBackend } from './config';
import type { LineSettings, ModemControl } from './context';

export interface SerialEndpoint {
  /** Human-readable: "stdio", "/dev/pts/5", "tcp 127.0.0.1:4555", … */
  readonly description: string;
  write(data: Uint8Array): void;
  close(): void;
  applyLineSettings?(settings: LineSettings): void;
  applyModemControl?(modem: ModemControl): void;
}

export interface SerialEndpointOptions {
  label: string;
  onInput(data: Uint8Array): void;
}

export async function openSerialBackend(spec: SerialBackend, opts: SerialEndpointOptions): Promise<SerialEndpoint> {
  switch (spec.kind) {
    case 'stdio':
      return openStdio(opts);
    case 'file':
      return openFile(spec.path, opts);
    case 'none':
      throw new Error(`${opts.label}: no backend`);
    default:
      throw new Error(`${opts.label}: serial backend "${spec.kind}" is not available yet`);
  }
}

function openStdio(opts: SerialEndpointOptions): SerialEndpoint {
  const stdin = process.stdin;
  const wasRaw = stdin.isTTY ? stdin.isRaw : false;
  const onData = (d: Buffer) => opts.onInput(d);
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.on('data', onData);
  stdin.resume();
  return {
    description: 'stdio',
    write: (data) => { process.stdout.write(data); },
    close: () => {
      stdin.off('data', onData);
      if (stdin.isTTY) stdin.setRawMode(wasRaw);
      stdin.pause();
    },
  };
}

function openFile(file: string, opts: SerialEndpointOptions): SerialEndpoint {
  let fd: number;
  try {
    fd = fs.openSync(file, 'a');
  } catch (e) {
    throw new Error(`${opts.label}: cannot open ${file} for writing: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return {
    description: `file ${file}`,
    write: (data) => { fs.writeSync(fd, data); },
    close: () => { fs.fsyncSync(fd); fs.closeSync(fd); },
  };
}
