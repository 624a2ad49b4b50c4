import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseArgs, UsageError } from '../../main/cli/args';
import { formatTiming, kvmAccessProblem } from '../../main/cli/main';
import { ConfigError, machineConfigFromJson, parseMemorySize, parseSerialBackend } from '../../main/vmm/config';

const noFiles = (f: string): unknown => { throw new ConfigError(`no file ${f}`); };
const MiB = 1024 * 1024;

function run(argv: string[], files: Record<string, unknown> = {}) {
  const r = parseArgs(['run', ...argv], (f) => (f in files ? files[f] : noFiles(f)));
  assert.equal(r.command, 'run');
  return r as Extract<typeof r, { command: 'run' }>;
}

test('memory sizes: a plain number is MiB, suffixes K/M/G/T work', () => {
  assert.equal(parseMemorySize('256'), 256 * MiB);
  assert.equal(parseMemorySize('512M'), 512 * MiB);
  assert.equal(parseMemorySize('2G'), 2048 * MiB);
  assert.equal(parseMemorySize('1.5G'), 1536 * MiB);
  assert.equal(parseMemorySize('4096K'), 4 * MiB);
  assert.equal(parseMemorySize('2GiB'), 2048 * MiB);
  assert.throws(() => parseMemorySize('1X'), /not a number/);
  assert.throws(() => parseMemorySize('1'), /too small/);
  assert.throws(() => parseMemorySize('-5'), /not a number/);
  assert.throws(() => parseMemorySize('2T'), /larger than 1 TiB/);
});

test('serial specs parse to backends and bad ones name the problem', () => {
  assert.deepEqual(parseSerialBackend('stdio'), { kind: 'stdio' });
  assert.deepEqual(parseSerialBackend('pty'), { kind: 'pty' });
  assert.deepEqual(parseSerialBackend('/dev/ttyUSB0'), { kind: 'device', path: '/dev/ttyUSB0' });
  assert.deepEqual(parseSerialBackend('tcp-listen:4555'), { kind: 'tcp', host: '127.0.0.1', port: 4555, listen: true });
  assert.deepEqual(parseSerialBackend('tcp:10.0.0.1:23'), { kind: 'tcp', host: '10.0.0.1', port: 23, listen: false });
  assert.deepEqual(parseSerialBackend('unix-listen:/tmp/s'), { kind: 'unix', path: '/tmp/s', listen: true });
  assert.deepEqual(parseSerialBackend('file:/tmp/log'), { kind: 'file', path: '/tmp/log' });
  assert.throws(() => parseSerialBackend('tcp:4555'), /tcp needs HOST:PORT/);
  assert.throws(() => parseSerialBackend('tcp-listen:99999'), /not a TCP port/);
  assert.throws(() => parseSerialBackend('bogus'), /not understood/);
  assert.throws(() => parseSerialBackend('file:'), /needs a path/);
});

test('porthole run: kernel boot with initrd, append, memory, cpus and serial ports', () => {
  const r = run(['--kernel', 'bz', '--initrd=rd', '--append', 'console=ttyS0', '--mem', '1G', '--cpus', '2',
    '--serial', 'stdio', '--serial', 'pty', '--serial', 'com4=file:/tmp/x', '--stats']);
  assert.deepEqual(r.config.boot, { kind: 'linux', kernel: 'bz', initrd: 'rd', append: 'console=ttyS0' });
  assert.equal(r.config.memoryBytes, 1024 * MiB);
  assert.equal(r.config.cpus, 2);
  assert.deepEqual(r.config.serial.map((s) => s.kind), ['stdio', 'pty', 'none', 'file']);
  assert.equal(r.stats, true);
});

test('porthole run: --stats prints the end table, --stats=live and --stats-interval add the live line', () => {
  assert.deepEqual([run(['--stats']).stats, run(['--stats']).liveStatsMs], [true, null]);
  assert.deepEqual([run(['--stats=end']).stats, run(['--stats=end']).liveStatsMs], [true, null]);
  assert.deepEqual([run(['--stats=live']).stats, run(['--stats=live']).liveStatsMs], [true, 1000]);
  const r = run(['--stats=live', '--stats-interval', '250']);
  assert.deepEqual([r.stats, r.liveStatsMs], [true, 250]);
  const live = run(['--stats-interval=500']);
  assert.deepEqual([live.stats, live.liveStatsMs], [false, 500]);
  assert.deepEqual([run([]).stats, run([]).liveStatsMs], [false, null]);
  // "--stats" never takes the next argument as its value.
  assert.throws(() => run(['--stats', 'live']), /unexpected argument "live"/);
});

test('porthole run: a config file is read and flags override it', () => {
  const r = run(['--config', 'vm.json', '--mem', '512'], {
    'vm.json': { version: 1, name: 'x', memory: '2G', cpus: 4, boot: { kind: 'firmware' }, serial: ['pty'] },
  });
  assert.equal(r.config.memoryBytes, 512 * MiB);
  assert.equal(r.config.cpus, 4);
  assert.equal(r.config.name, 'x');
  assert.deepEqual(r.config.serial[0], { kind: 'pty' });
});

test('wrong arguments give one clear message', () => {
  const bad: [string[], RegExp][] = [
    [['--bogus'], /unknown option --bogus/],
    [['--mem'], /--mem needs a value/],
    [['--cpus', 'two'], /whole number from 1 to 64/],
    [['--cpus', '65'], /whole number from 1 to 64/],
    [['--kernel', 'a', '--firmware', 'b'], /choose one boot source/],
    [['--initrd', 'x'], /need --kernel/],
    [['--serial', 'stdio', '--debugcon', 'stdio'], /only one port can be connected to stdio/],
    [['--serial', 'a', '--serial', 'b', '--serial', 'c', '--serial', 'd', '--serial', 'e'], /not understood|at most four/],
    [['--config', 'missing.json'], /no file missing.json/],
    [['stray'], /unexpected argument "stray"/],
    [['--stats=yes'], /takes no value/],
    [['--stats-interval', '50'], /from 100 to 60000/],
    [['--stats-interval', '1.5e3x'], /not a whole number/],
  ];
  for (const [argv, re] of bad) {
    assert.throws(() => run(argv), (e: Error) => (e instanceof UsageError || e instanceof ConfigError) && re.test(e.message), argv.join(' '));
  }
  assert.throws(() => parseArgs(['frobnicate'], noFiles), /unknown command "frobnicate"/);
  assert.equal(parseArgs([], noFiles).command, 'help');
  assert.equal(parseArgs(['run', '--help'], noFiles).command, 'help');
});

test('config files are validated strictly with the file name in the message', () => {
  assert.throws(() => machineConfigFromJson([], 'a.json'), /a.json: the top level must be a JSON object/);
  assert.throws(() => machineConfigFromJson({ version: 2 }, 'a.json'), /version 2 is not supported/);
  assert.throws(() => machineConfigFromJson({ memry: 5 }, 'a.json'), /unknown field "memry"/);
  assert.throws(() => machineConfigFromJson({ boot: { kind: 'linux' } }, 'a.json'), /boot.kernel must be a non-empty string/);
  assert.throws(() => machineConfigFromJson({ serial: [1] }, 'a.json'), /serial\[0\] must be a non-empty string/);
  assert.throws(() => machineConfigFromJson({ cpus: 1.5 }, 'a.json'), /cpus must be a whole number/);
});

test('a missing or inaccessible /dev/kvm is explained with the fix', () => {
  assert.match(kvmAccessProblem('/nonexistent/kvm') ?? '', /does not exist: enable virtualization/);
});

test('--timings is off by default, a flag without a value, and prints ms since process start with the wall clock', () => {
  assert.equal(run(['--kernel', 'k']).timings, false);
  assert.equal(run(['--kernel', 'k', '--timings']).timings, true);
  assert.equal(run(['--kernel', 'k', '--timings', '--verbose']).verbose, true);
  assert.throws(() => run(['--kernel', 'k', '--timings=yes']), /--timings takes no value/);
  assert.equal(formatTiming('first-kvm-run', 1000.25, 750), 'porthole: timing: first-kvm-run +250.3 ms (epoch 1000.3)\n');
  // The line the boot bench parses (test/bench/boot.ts).
  assert.match(formatTiming('first-console-byte', 1764265000123.4, 1764265000000), /^porthole: timing: first-console-byte \+123\.4 ms \(epoch 1764265000123\.4\)\n$/);
});

test('--no-reboot is off by default and a flag without a value', () => {
  assert.equal(run(['--kernel', 'k']).noReboot, false);
  assert.equal(run(['--kernel', 'k', '--no-reboot']).noReboot, true);
  assert.throws(() => run(['--kernel', 'k', '--no-reboot=1']), UsageError);
});

test('--usb adds emulated devices on an xHCI controller; bad specs name the problem', () => {
  const r = run(['--usb', 'keyboard', '--usb', 'storage:/tmp/a.img', '--usb', 'storage-ro:/tmp/b.img', '--usb', 'tablet']);
  assert.deepEqual(r.config.usb, {
    controller: 'xhci',
    devices: [
      { kind: 'keyboard' },
      { kind: 'storage', path: '/tmp/a.img', readOnly: false },
      { kind: 'storage', path: '/tmp/b.img', readOnly: true },
      { kind: 'tablet' },
    ],
  });
  assert.equal(run([]).config.usb, undefined);
  assert.throws(() => run(['--usb', 'mouse']), /USB device "mouse" is not understood: use keyboard, tablet, storage:PATH, storage-ro:PATH, serial or serial:BACKEND/);
  assert.throws(() => run(['--usb', 'storage:']), /not understood/);
  assert.throws(() => run(Array.from({ length: 9 }, () => ['--usb', 'keyboard']).flat()), /at most 8 USB devices/);
  // A config file's devices come first, the command line's after them.
  const f = run(['--config', 'vm.json', '--usb', 'tablet'], { 'vm.json': { usb: { devices: [{ kind: 'keyboard' }] } } });
  assert.deepEqual(f.config.usb?.devices, [{ kind: 'keyboard' }, { kind: 'tablet' }]);
});

test('the config file usb section is validated and its errors name the field', () => {
  assert.deepEqual(machineConfigFromJson({ usb: { devices: [{ kind: 'storage', path: 'x.img', readOnly: true }] } }, 'a.json').usb,
    { controller: 'xhci', devices: [{ kind: 'storage', path: 'x.img', readOnly: true }] });
  assert.deepEqual(machineConfigFromJson({ usb: { controller: 'none' } }, 'a.json').usb, { controller: 'none', devices: [] });
  const bad: [unknown, RegExp][] = [
    [[], /a.json: usb must be an object/],
    [{ ports: 4 }, /a.json: usb: unknown field "ports"/],
    [{ controller: 'ehci' }, /a.json: usb.controller must be "xhci" or "none"/],
    [{ devices: {} }, /a.json: usb.devices must be a list/],
    [{ devices: ['keyboard'] }, /a.json: usb.devices\[0\] must be an object with a "kind"/],
    [{ devices: [{ kind: 'webcam' }] }, /a.json: usb.devices\[0\].kind must be "storage", "keyboard", "tablet" or "serial"/],
    [{ devices: [{ kind: 'storage' }] }, /a.json: usb.devices\[0\].path must be a non-empty string/],
    [{ devices: [{ kind: 'storage', path: 'x', readOnly: 'yes' }] }, /a.json: usb.devices\[0\].readOnly must be true or false/],
    [{ devices: [{ kind: 'keyboard', path: 'x' }] }, /a.json: usb.devices\[0\]: unknown field "path"/],
    [{ controller: 'none', devices: [{ kind: 'keyboard' }] }, /a.json: usb: devices need a controller/],
    [{ devices: Array.from({ length: 9 }, () => ({ kind: 'tablet' })) }, /at most 8 devices/],
  ];
  for (const [usb, message] of bad) assert.throws(() => machineConfigFromJson({ usb }, 'a.json'), message);
});

test('--disk adds virtio-blk disks after the config file\'s; bad specs name the problem', () => {
  const r = run(['--disk', '/tmp/a.img', '--disk', '/tmp/b.img,ro,serial=B1']);
  assert.deepEqual(r.config.disks, [{ path: '/tmp/a.img', readOnly: false }, { path: '/tmp/b.img', readOnly: true, serial: 'B1' }]);
  assert.equal(run([]).config.disks, undefined);
  const f = run(['--config', 'vm.json', '--disk', 'c.img'], { 'vm.json': { disks: [{ path: 'd.img', name: 'data' }] } });
  assert.deepEqual(f.config.disks, [{ path: 'd.img', readOnly: false, name: 'data' }, { path: 'c.img', readOnly: false }]);
  assert.throws(() => run(['--disk', 'a.img,cache=none']), /option "cache=none" is not understood/);
  assert.throws(() => run(Array.from({ length: 9 }, (_, i) => ['--disk', `${i}.img`]).flat()), /at most 8 disks/);
});

test('--nic adds network cards after the config file\'s; bad specs name the problem', () => {
  const r = run(['--nic', 'virtio,tap=tap0', '--nic', 'virtio,mac=52:54:00:00:00:02,socket=connect:/tmp/n.sock,pcap=/tmp/n.pcapng']);
  assert.deepEqual(r.config.nics, [
    { model: 'virtio', backend: { kind: 'tap', ifname: 'tap0' } },
    { model: 'virtio', mac: '52:54:00:00:00:02', backend: { kind: 'socket', mode: 'connect', path: '/tmp/n.sock' }, pcap: '/tmp/n.pcapng' },
  ]);
  assert.equal(run([]).config.nics, undefined);
  const f = run(['--config', 'vm.json', '--nic', 'virtio'], { 'vm.json': { nics: [{ model: 'virtio', backend: { kind: 'udp', local: '127.0.0.1:5000', remote: '127.0.0.1:5001' } }] } });
  assert.deepEqual(f.config.nics?.map((n) => n.backend.kind), ['udp', 'none']);
  assert.throws(() => run(['--nic', 'virtio,tap=tap0,mtu=9000']), /option "mtu=9000" is not understood/);
  assert.throws(() => run(['--nic', 'virtio,pcap=a', '--nic', 'virtio,pcap=a']), /pcap file a is written by NIC 0/);
  assert.throws(() => run(Array.from({ length: 5 }, () => ['--nic', 'virtio']).flat()), /at most 4 NICs/);
});

test('--disk IMAGE,bus=sata and --cdrom ISO put SATA disks and CD-ROM drives on AHCI; config disks take bus and media', () => {
  const r = run(['--disk', 'a.img', '--disk', 'b.img,bus=sata,serial=S2', '--cdrom', 'x.iso', '--cdrom', 'empty']);
  assert.deepEqual(r.config.disks, [
    { path: 'a.img', readOnly: false },
    { path: 'b.img', readOnly: false, bus: 'sata', serial: 'S2' },
    { path: 'x.iso', readOnly: true, bus: 'sata', media: 'cdrom' },
    { readOnly: true, bus: 'sata', media: 'cdrom' },
  ]);
  const f = run(['--config', 'vm.json'], { 'vm.json': { disks: [{ path: 'd.img', bus: 'sata' }, { media: 'cdrom' }, { path: 'i.iso', media: 'cdrom', name: 'cd' }] } });
  assert.deepEqual(f.config.disks, [
    { path: 'd.img', readOnly: false, bus: 'sata' }, { readOnly: true, bus: 'sata', media: 'cdrom' },
    { path: 'i.iso', readOnly: true, bus: 'sata', media: 'cdrom', name: 'cd' },
  ]);
  assert.throws(() => run(['--disk', 'a.img,bus=scsi']), /bus must be "virtio" or "sata"/);
  assert.throws(() => run(['--disk', 'a.img,bus=sata,queues=2']), /a SATA disk has one queue/);
  assert.throws(() => run(['--cdrom', 'x.iso,ro']), /option "ro" is not understood/);
  assert.throws(() => machineConfigFromJson({ disks: [{ path: 'x.iso', media: 'cdrom', bus: 'virtio' }] }), /a CD-ROM drive sits on the SATA bus/);
  assert.throws(() => machineConfigFromJson({ disks: [{ path: 'x.iso', media: 'cdrom', readOnly: false }] }), /a CD-ROM is read-only/);
  assert.throws(() => machineConfigFromJson({ disks: [{ bus: 'sata' }] }), /disks\[0\]\.path must be a non-empty string/);
  assert.throws(() => machineConfigFromJson({ disks: [{ path: 'a', media: 'tape' }] }), /media must be "disk" or "cdrom"/);
  assert.throws(() => run(Array.from({ length: 7 }, (_, i) => ['--cdrom', `${i}.iso`]).flat()), /at most 6 SATA disks and CD-ROM drives/);
});
