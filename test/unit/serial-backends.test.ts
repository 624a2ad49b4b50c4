import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { libc } from '../../native';
import type { SerialBackend } from '../../main/vmm/config';
import {
  cflagFor, nearestBaud, openSerialBackend, type ModemStatusLines, type SerialEndpoint,
} from '../../main/vmm/host/serial-backends';
import { openTerminal, waitFor } from '../helpers/uart';

const { O_NOCTTY, O_NONBLOCK } = fs.constants;

/** Collects what an endpoint hands to the guest, and its log lines. */
function sink() {
  const s = {
    input: Buffer.alloc(0),
    logs: [] as string[],
    modem: [] as ModemStatusLines[],
    options: {
      label: 'COM1',
      onInput: (data: Uint8Array) => { s.input = Buffer.concat([s.input, data]); },
      onLog: (text: string) => { s.logs.push(text); },
      onModemStatus: (lines: ModemStatusLines) => { s.modem.push(lines); },
    },
  };
  return s;
}

const TERMIOS_IFLAG = 0;
const TERMIOS_OFLAG = 4;
const TERMIOS_CFLAG = 8;
const TERMIOS_LFLAG = 12;
const ECHO = 0o10;
const ICANON = 0o2;
const OPOST = 0o1;
const ICRNL = 0o400;

const everyByte = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

test('pty: a reader on the slave gets the guest bytes unchanged and its bytes reach the guest, without echo', async () => {
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'pty' }, s.options);
  try {
    assert.match(endpoint.description, /^\/dev\/pts\/\d+$/);
    const terminal = openTerminal(endpoint.description);
    const termios = libc.tcgetattr(terminal.fd);
    assert.equal(termios.readUInt32LE(TERMIOS_LFLAG) & (ECHO | ICANON), 0, 'the slave is raw');
    assert.equal(termios.readUInt32LE(TERMIOS_OFLAG) & OPOST, 0);
    assert.equal(termios.readUInt32LE(TERMIOS_IFLAG) & ICRNL, 0);
    endpoint.write(everyByte);
    endpoint.write(Buffer.from('line\r\n'));
    await waitFor(() => terminal.received.length >= 262, 'guest output on the slave');
    assert.deepEqual(terminal.received, Buffer.concat([everyByte, Buffer.from('line\r\n')]));
    terminal.write(everyByte);
    await waitFor(() => s.input.length >= 256, 'terminal input at the guest');
    assert.deepEqual(s.input, everyByte);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(terminal.received.length, 262, 'nothing echoed back to the terminal');
    terminal.close();
  } finally {
    endpoint.close();
  }
});

test('pty: after the reader leaves output is dropped, and a new reader is picked up', async () => {
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'pty' }, s.options);
  try {
    const first = openTerminal(endpoint.description);
    endpoint.write(Buffer.from('one'));
    await waitFor(() => first.received.toString() === 'one', 'first reader');
    first.close();
    await waitFor(() => s.logs.some((l) => l.includes('closed by its reader')), 'the hang-up to be noticed');
    endpoint.write(Buffer.from('lost'));
    assert.equal(endpoint.dropped, 4);
    const second = openTerminal(endpoint.description);
    second.write(Buffer.from('hi'));
    await waitFor(() => s.input.toString() === 'hi', 'the second reader to be attached');
    endpoint.write(Buffer.from('two'));
    await waitFor(() => second.received.toString() === 'two', 'output to the second reader');
    second.close();
  } finally {
    endpoint.close();
  }
});

test('pty: nobody ever attached: megabytes of output neither block nor throw, the excess is dropped', async () => {
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'pty' }, s.options);
  try {
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    for (let i = 0; i < 48; i++) endpoint.write(chunk);
    assert.ok((endpoint.dropped ?? 0) > 0, 'some output was dropped');
    assert.equal(endpoint.congested ?? false, false, 'a PTY never holds the guest back');
    assert.ok(s.logs.some((l) => l.includes('not being read fast enough')));
  } finally {
    endpoint.close();
  }
});

test('pty: closing the endpoint hangs up the reader and leaves no handle behind', async () => {
  const endpoint = await openSerialBackend({ kind: 'pty' }, sink().options);
  const fd = fs.openSync(endpoint.description, fs.constants.O_RDWR | O_NOCTTY | O_NONBLOCK);
  endpoint.close();
  const revents = libc.poll([{ fd, events: libc.POLLIN }], 0)[0];
  assert.ok(revents & libc.POLLHUP, 'the slave sees the hang-up');
  fs.closeSync(fd);
  endpoint.close(); // twice is harmless
});

async function roundTrip(endpoint: SerialEndpoint, s: ReturnType<typeof sink>, peer: net.Socket): Promise<void> {
  let fromGuest = Buffer.alloc(0);
  peer.on('data', (d: Buffer) => { fromGuest = Buffer.concat([fromGuest, d]); });
  endpoint.write(everyByte);
  await waitFor(() => fromGuest.length >= 256, 'guest output at the peer');
  assert.deepEqual(fromGuest, everyByte);
  peer.write(Buffer.from('from the peer'));
  await waitFor(() => s.input.toString() === 'from the peer', 'peer input at the guest');
}

function connectClient(target: net.NetConnectOpts): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const c = net.connect(target, () => resolve(c));
    c.once('error', reject);
  });
}

test('tcp listen: one client at a time, bytes both ways, output dropped while nobody is connected', async () => {
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'tcp', host: '127.0.0.1', port: 0, listen: true } as SerialBackend, s.options);
  try {
    const port = Number(/^tcp-listen 127\.0\.0\.1:(\d+)$/.exec(endpoint.description)?.[1]);
    assert.ok(port > 0, endpoint.description);
    endpoint.write(Buffer.from('nobody hears this'));
    assert.equal(endpoint.dropped, 17);
    const client = await connectClient({ host: '127.0.0.1', port });
    await waitFor(() => s.logs.some((l) => l.includes('client connected')), 'the accept');
    await roundTrip(endpoint, s, client);
    const intruder = await connectClient({ host: '127.0.0.1', port });
    await new Promise<void>((resolve) => intruder.on('close', () => resolve()));
    assert.ok(s.logs.some((l) => l.includes('refused a second client')));
    client.destroy();
    await waitFor(() => s.logs.some((l) => l.includes('closed')), 'the disconnect');
    const next = await connectClient({ host: '127.0.0.1', port });
    s.input = Buffer.alloc(0);
    await waitFor(() => s.logs.filter((l) => l.includes('client connected')).length === 2, 'the second accept');
    await roundTrip(endpoint, s, next);
    next.destroy();
  } finally {
    endpoint.close();
  }
});

test('tcp: a client that stops reading makes the endpoint congested instead of buffering without bound', async () => {
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'tcp', host: '127.0.0.1', port: 0, listen: true } as SerialBackend, s.options);
  try {
    const port = Number(endpoint.description.split(':').at(-1));
    const client = await connectClient({ host: '127.0.0.1', port });
    client.pause();
    await waitFor(() => s.logs.some((l) => l.includes('client connected')), 'the accept');
    const chunk = Buffer.alloc(256 * 1024, 0x55);
    let written = 0;
    while (!endpoint.congested && written < 256 * 1024 * 1024) {
      endpoint.write(chunk);
      written += chunk.length;
    }
    assert.equal(endpoint.congested, true);
    assert.equal(endpoint.dropped, 0, 'a present client loses nothing');
    client.destroy();
  } finally {
    endpoint.close();
  }
});

test('tcp connect: dials out, carries bytes both ways; a refused connection is one clear sentence', async () => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'tcp', host: '127.0.0.1', port, listen: false }, s.options);
  try {
    assert.equal(endpoint.description, `tcp 127.0.0.1:${port}`);
    await roundTrip(endpoint, s, await accepted);
  } finally {
    endpoint.close();
    await new Promise((resolve) => server.close(resolve));
  }
  await assert.rejects(
    openSerialBackend({ kind: 'tcp', host: '127.0.0.1', port, listen: false }, sink().options),
    { message: `COM1: cannot connect to 127.0.0.1:${port}: ECONNREFUSED (connection refused)` },
  );
});

test('tcp listen on a port in use fails with one clear sentence', async () => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  try {
    await assert.rejects(
      openSerialBackend({ kind: 'tcp', host: '127.0.0.1', port, listen: true }, sink().options),
      { message: `COM1: cannot listen on 127.0.0.1:${port}: EADDRINUSE (address already in use)` },
    );
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-serial-'));
}

test('unix listen: round trip, and the socket file is removed on close', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'com1.sock');
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'unix', path: file, listen: true }, s.options);
  try {
    assert.equal(endpoint.description, `unix-listen ${file}`);
    endpoint.write(Buffer.from('x'));
    assert.equal(endpoint.dropped, 1);
    const client = await connectClient({ path: file });
    await waitFor(() => s.logs.some((l) => l.includes('client connected')), 'the accept');
    await roundTrip(endpoint, s, client);
    client.destroy();
  } finally {
    endpoint.close();
  }
  await waitFor(() => !fs.existsSync(file), 'the socket file to go');
  fs.rmSync(dir, { recursive: true });
});

test('unix listen: a stale socket file is replaced, a regular file or a live socket is left alone', async () => {
  const dir = tempDir();
  const stale = path.join(dir, 'stale.sock');
  // A listener killed outright leaves its socket file behind.
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  assert.ok(fs.lstatSync(stale).isSocket());
  const endpoint = await openSerialBackend({ kind: 'unix', path: stale, listen: true }, sink().options);
  endpoint.close();

  const regular = path.join(dir, 'notes.txt');
  fs.writeFileSync(regular, 'keep me');
  await assert.rejects(openSerialBackend({ kind: 'unix', path: regular, listen: true }, sink().options),
    { message: `COM1: cannot listen on ${regular}: it exists and is not a socket` });
  assert.equal(fs.readFileSync(regular, 'utf8'), 'keep me');

  const live = path.join(dir, 'live.sock');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(live, () => resolve()));
  await assert.rejects(openSerialBackend({ kind: 'unix', path: live, listen: true }, sink().options),
    { message: `COM1: cannot listen on ${live}: another program is listening there` });
  await new Promise((resolve) => server.close(resolve));
  fs.rmSync(dir, { recursive: true });
});

test('unix connect: round trip; a missing socket is one clear sentence', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'peer.sock');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(file, () => resolve()));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'unix', path: file, listen: false }, s.options);
  try {
    await roundTrip(endpoint, s, await accepted);
  } finally {
    endpoint.close();
    await new Promise((resolve) => server.close(resolve));
  }
  await assert.rejects(openSerialBackend({ kind: 'unix', path: path.join(dir, 'none.sock'), listen: false }, sink().options),
    { message: `COM1: cannot connect to ${path.join(dir, 'none.sock')}: ENOENT (no such file or directory)` });
  fs.rmSync(dir, { recursive: true });
});

// A PTY slave is a real tty: termios set through the device backend reads back with
// tcgetattr. (A USB serial adapter with modem lines is not available on this machine.)
const CBAUD = 0o10017;
const CSIZE = 0o60;
const CSTOPB = 0o100;
const PARENB = 0o400;
const PARODD = 0o1000;
const CMSPAR = 0o10000000000;
const CRTSCTS = 0o20000000000;
const CLOCAL = 0o4000;

test('device: raw mode, line settings applied with termios and read back, bytes both ways', async () => {
  const pty = libc.openPty(libc.O_NONBLOCK);
  const s = sink();
  const endpoint = await openSerialBackend({ kind: 'device', path: pty.path }, s.options);
  try {
    assert.equal(endpoint.description, pty.path);
    let t = libc.tcgetattr(pty.fd);
    assert.equal(t.readUInt32LE(TERMIOS_LFLAG) & (ECHO | ICANON), 0, 'raw after open');
    assert.equal(t.readUInt32LE(TERMIOS_CFLAG) & (CLOCAL | CRTSCTS), CLOCAL, 'modem lines are the guest\'s business');

    // Linux's PTY driver forces CS8 and clears PARENB whatever is set (pty_set_termios),
    // so data bits and parity enable are checked on cflagFor below; the rest reads back.
    endpoint.applyLineSettings?.({ baud: 9600, dataBits: 7, parity: 'odd', stopBits: 2 });
    t = libc.tcgetattr(pty.fd);
    let cflag = t.readUInt32LE(TERMIOS_CFLAG);
    assert.equal(cflag & CBAUD, 13, 'B9600');
    assert.equal(cflag & (PARODD | CMSPAR), PARODD);
    assert.equal(cflag & CSTOPB, CSTOPB);

    endpoint.applyLineSettings?.({ baud: 115200, dataBits: 8, parity: 'space', stopBits: 1 });
    cflag = libc.tcgetattr(pty.fd).readUInt32LE(TERMIOS_CFLAG);
    assert.equal(cflag & CBAUD, 0o10002, 'B115200');
    assert.equal(cflag & (PARODD | CMSPAR) >>> 0, CMSPAR);
    assert.equal(cflag & CSTOPB, 0);

    endpoint.applyLineSettings?.({ baud: 28800, dataBits: 8, parity: 'none', stopBits: 1 });
    assert.equal(libc.tcgetattr(pty.fd).readUInt32LE(TERMIOS_CFLAG) & CBAUD, 15, '28800 (divisor 4) maps to B38400');

    libc.write(pty.fd, everyByte);
    await waitFor(() => s.input.length >= 256, 'device input at the guest');
    assert.deepEqual(s.input, everyByte);
    endpoint.write(everyByte);
    let fromGuest = Buffer.alloc(0);
    const buf = Buffer.alloc(1024);
    await waitFor(() => {
      const n = libc.read(pty.fd, buf);
      if (n > 0) fromGuest = Buffer.concat([fromGuest, buf.subarray(0, n)]);
      return fromGuest.length >= 256;
    }, 'guest output at the device');
    assert.deepEqual(fromGuest, everyByte);

    // A PTY has no modem lines: the backend says so once and carries on.
    endpoint.applyModemControl?.({ dtr: true, rts: false });
    assert.ok(s.logs.some((l) => l.includes('has no modem control lines')));
    assert.deepEqual(s.modem, []);
  } finally {
    endpoint.close();
    libc.close(pty.fd);
  }
});

test('device: a missing path or a non-tty is one clear sentence', async () => {
  await assert.rejects(openSerialBackend({ kind: 'device', path: '/dev/ttyUSB99' }, sink().options),
    { message: 'COM1: cannot open /dev/ttyUSB99: ENOENT (no such file or directory)' });
  await assert.rejects(openSerialBackend({ kind: 'device', path: '/dev/null' }, sink().options),
    { message: 'COM1: /dev/null is not a serial device: ENOTTY (not a terminal or unsupported ioctl)' });
});

test('baud rates map to the nearest Bxxx constant and the cflag keeps the bits the guest does not own', () => {
  assert.deepEqual(nearestBaud(115200), { baud: 115200, constant: 0o10002 });
  assert.deepEqual(nearestBaud(16457), { baud: 19200, constant: 14 });
  assert.deepEqual(nearestBaud(1), { baud: 50, constant: 1 });
  assert.deepEqual(nearestBaud(1_000_000_000), { baud: 4000000, constant: 0o10017 });
  const HUPCL = 0o2000;
  const cflag = cflagFor(HUPCL | CRTSCTS | 0o60 | PARENB, { baud: 300, dataBits: 5, parity: 'odd', stopBits: 1 });
  assert.equal(cflag & HUPCL, HUPCL);
  assert.equal(cflag & CRTSCTS, 0);
  assert.equal(cflag & CSIZE, 0);
  assert.equal(cflag & (PARENB | PARODD | CMSPAR), PARENB | PARODD);
  assert.equal(cflag & CBAUD, 7);
  const cases: [Parameters<typeof cflagFor>[1], number, number][] = [
    [{ baud: 9600, dataBits: 7, parity: 'even', stopBits: 2 }, 0o40, PARENB],
    [{ baud: 9600, dataBits: 6, parity: 'mark', stopBits: 1 }, 0o20, (PARENB | PARODD | CMSPAR) >>> 0],
    [{ baud: 9600, dataBits: 8, parity: 'space', stopBits: 1 }, 0o60, (PARENB | CMSPAR) >>> 0],
    [{ baud: 9600, dataBits: 8, parity: 'none', stopBits: 1 }, 0o60, 0],
  ];
  for (const [settings, size, parity] of cases) {
    const c = cflagFor(0, settings);
    assert.equal(c & CSIZE, size, JSON.stringify(settings));
    assert.equal((c & (PARENB | PARODD | CMSPAR)) >>> 0, parity, JSON.stringify(settings));
  }
});
