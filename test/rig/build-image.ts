// Builds the rig's images from Debian packages: the kernel (one bzImage for L1 and for the
// nested L2 guests), an L1 initramfs (busybox, the modules the workstation needs, /init
// that runs a scenario) and the L2 kit initramfs (busybox, a module set a test picks from,
// a shell on the console). Output is cached in build/rig/img-<key>/, where the key hashes
// the package versions, this builder's code, the init scripts and the module lists.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { buildCpioGz, withParents, type CpioEntry } from './cpio';
import {
  RigBuildError, candidateVersion, ensureAptLists, fetchDeb, metaDependency, moduleClosure, moduleKey, parseModInfo,
  readDebTar, type ModInfo,
} from './deb';
import { KIT_TOOLS, kitToolEntries, kitToolVersions } from './kit-tools';
import { rigBuildDir, rigSourceDir } from './paths';

/** Loaded at L1 boot: nested KVM, USB host + devices, VFIO, 9p for the shares, e1000. */
export const L1_MODULES = [
  'kvm_amd', 'xhci_pci', 'usb_storage', 'sd_mod', 'usbhid', 'hid_generic', 'ftdi_sio',
  'vfio_pci', 'vfio_iommu_type1', 'virtio_pci', '9pnet_virtio', '9p', 'e1000', 'tun',
  'vfat', 'nls_cp437', 'nls_iso8859_1', 'virtio_console', 'nvme', 'snd_usb_audio', 'uas', 'virtio_net',
];

/** In the L2 kit, loaded on demand with kit.modules=: the drivers that meet Porthole's devices. */
export const KIT_MODULES = [
  'xhci_pci', 'ehci_pci', 'uhci_hcd', 'usb_storage', 'uas', 'sd_mod', 'sr_mod', 'usbhid', 'hid_generic', 'evdev',
  'ftdi_sio', 'cdc_acm', 'virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_scsi',
  'ne2k_pci', 'e1000', 'ahci', 'vfat', 'nls_cp437', 'nls_iso8859_1', 'ext4', 'nvme', 'snd_usb_audio',
];

const BUILDER_FILES = ['build-image.js', 'deb.js', 'cpio.js', 'kit-tools.js'];
const INIT_FILES = ['l1-init.sh', 'kit-init.sh', 'kit-lspci.sh'];

export interface RigImage {
  dir: string;
  key: string;
  kernelPackage: string;
  kernelPackageVersion: string;
  busyboxVersion: string;
  kernelRelease: string;
  vmlinuz: string;
  l1Initrd: string;
  kitInitrd: string;
  l1Modules: string[];
  kitModules: string[];
  sizes: Record<string, number>;
  buildSeconds: number;
}

export interface BuildOptions {
  log?: (line: string) => void;
  /** Rebuild even when the cache holds this key. */
  force?: boolean;
}

function inputsKey(kernelPackage: string, kernelVersion: string, busyboxVersion: string, toolVersions: Record<string, string>): string {
  const h = crypto.createHash('sha256');
  h.update(`${kernelPackage}=${kernelVersion}\nbusybox-static=${busyboxVersion}\n`);
  h.update(`tools:${JSON.stringify(toolVersions)}\n`);
  h.update(`l1:${L1_MODULES.join(',')}\nkit:${KIT_MODULES.join(',')}\n`);
  for (const f of BUILDER_FILES) h.update(fs.readFileSync(path.join(__dirname, f)));
  for (const f of INIT_FILES) h.update(fs.readFileSync(path.join(rigSourceDir, 'init', f)));
  return h.digest('hex').slice(0, 16);
}

interface ResolvedPackages { kernelPackage: string; kernelVersion: string; busyboxVersion: string; toolVersions: Record<string, string> }

/** Identifies the state of apt's package lists; when it is unchanged so are the candidates. */
function aptListsStamp(): string {
  const dir = '/var/lib/apt/lists';
  try {
    return fs.readdirSync(dir).filter((f) => f.includes('Packages'))
      .map((f) => { const st = fs.statSync(path.join(dir, f)); return `${f}:${st.size}:${st.mtimeMs}`; }).join('\n');
  } catch {
    return '';
  }
}

/** The kernel and busybox versions apt would install now (apt-cache takes seconds, so it is remembered). */
function resolvePackages(): ResolvedPackages {
  const memo = path.join(rigBuildDir, 'resolved.json');
  const stamp = aptListsStamp();
  try {
    const m = JSON.parse(fs.readFileSync(memo, 'utf8')) as ResolvedPackages & { stamp: string };
    if (stamp && m.stamp === stamp && m.toolVersions) return m;
  } catch { /* none yet */ }
  ensureAptLists('busybox-static');
  const kernelPackage = metaDependency('linux-image-amd64', 'linux-image-');
  if (!kernelPackage) throw new RigBuildError('apt cannot resolve linux-image-amd64 to a kernel package');
  const kernelVersion = candidateVersion(kernelPackage);
  const busyboxVersion = candidateVersion('busybox-static');
  if (!kernelVersion || !busyboxVersion) throw new RigBuildError(`apt has no candidate for ${kernelVersion ? 'busybox-static' : kernelPackage}`);
  const resolved = { kernelPackage, kernelVersion, busyboxVersion, toolVersions: kitToolVersions() };
  fs.mkdirSync(rigBuildDir, { recursive: true });
  fs.writeFileSync(memo, JSON.stringify({ ...resolved, stamp: aptListsStamp() }) + '\n');
  return resolved;
}

/** Returns the cached image for the current inputs, building it first when needed. */
/**
 * The manifest's image with its files in `dir`: the paths it stored are where it was built,
 * which another checkout (a git worktree, a moved tree) does not share.
 */
function imageIn(dir: string, stored: RigImage): RigImage {
  const here = (file: string) => path.join(dir, path.basename(file));
  return { ...stored, dir, vmlinuz: here(stored.vmlinuz), l1Initrd: here(stored.l1Initrd), kitInitrd: here(stored.kitInitrd) };
}

export async function ensureImage(opts: BuildOptions = {}): Promise<RigImage> {
  const log = opts.log ?? (() => {});
  for (const tool of ['apt-cache', 'apt-get', 'dpkg-deb']) {
    if (!fs.existsSync(`/usr/bin/${tool}`)) throw new RigBuildError(`the rig builds its images from Debian packages and needs ${tool}, which this system lacks`);
  }
  const { kernelPackage, kernelVersion, busyboxVersion, toolVersions } = resolvePackages();
  const key = inputsKey(kernelPackage, kernelVersion, busyboxVersion, toolVersions);
  const dir = path.join(rigBuildDir, `img-${key}`);
  const manifestPath = path.join(dir, 'manifest.json');
  if (!opts.force && fs.existsSync(manifestPath)) return imageIn(dir, JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as RigImage);

  const started = Date.now();
  log(`building rig image ${key}: ${kernelPackage} ${kernelVersion}, busybox-static ${busyboxVersion}`);
  const debDir = path.join(rigBuildDir, 'debs');
  const kernelDeb = fetchDeb(kernelPackage, kernelVersion, debDir);
  const busyboxDeb = fetchDeb('busybox-static', busyboxVersion, debDir);
  log(`packages: ${path.basename(kernelDeb)} (${mb(fs.statSync(kernelDeb).size)}), ${path.basename(busyboxDeb)} (${mb(fs.statSync(busyboxDeb).size)})`);

  // Pass 1: every module's name and dependencies, the kernel image and the built-in list.
  const infos = new Map<string, ModInfo>();
  const pathOf = new Map<string, string>();
  const builtin = new Set<string>();
  let vmlinuz: Buffer | null = null;
  let release = '';
  await readDebTar(kernelDeb,
    (e) => /^lib\/modules\/[^/]+\/(kernel\/.*\.ko|modules\.builtin)$/.test(e.name) || /^boot\/vmlinuz-/.test(e.name),
    (e, data) => {
      if (e.name.startsWith('boot/')) { vmlinuz = data; release = e.name.slice('boot/vmlinuz-'.length); return; }
      if (e.name.endsWith('/modules.builtin')) {
        for (const l of data.toString('utf8').split('\n')) if (l) builtin.add(moduleKey(path.basename(l, '.ko')));
        return;
      }
      const info = parseModInfo(data, moduleKey(path.basename(e.name, '.ko')));
      const k = moduleKey(info.name);
      infos.set(k, info);
      pathOf.set(k, e.name);
    });
  if (!vmlinuz || !release) throw new RigBuildError(`${kernelDeb} has no /boot/vmlinuz-*`);
  if (infos.size === 0) throw new RigBuildError(`${kernelDeb} has no kernel modules`);

  const l1Order = moduleClosure(L1_MODULES, infos, builtin);
  const kitClosures = new Map<string, string[]>();
  for (const m of KIT_MODULES) {
    const c = moduleClosure([m], infos, builtin);
    if (c.length) kitClosures.set(moduleKey(m), c);
  }
  const kitAll = [...new Set([...kitClosures.values()].flat())];

  // Pass 2: the contents of just the modules either initramfs needs.
  const neededPaths = new Map<string, string>();
  for (const k of new Set([...l1Order, ...kitAll])) neededPaths.set(pathOf.get(k)!, k);
  const koData = new Map<string, Buffer>();
  await readDebTar(kernelDeb, (e) => neededPaths.has(e.name), (e, data) => { koData.set(neededPaths.get(e.name)!, data); });
  for (const k of neededPaths.values()) if (!koData.has(k)) throw new RigBuildError(`module ${k} vanished between two reads of ${kernelDeb}`);

  let busybox: Buffer | null = null;
  await readDebTar(busyboxDeb, (e) => e.name === 'bin/busybox', (_e, data) => { busybox = data; });
  if (!busybox) throw new RigBuildError(`${busyboxDeb} has no bin/busybox`);

  const tools = await kitToolEntries(toolVersions, debDir);
  log(`kit tools: ${KIT_TOOLS.map((t) => path.basename(t)).join(', ')} with ${tools.entries.length - KIT_TOOLS.length} libraries, links and data files`);

  const script = (f: string) => fs.readFileSync(path.join(rigSourceDir, 'init', f));
  const l1 = buildCpioGz(withParents([
    { kind: 'file', path: 'init', data: script('l1-init.sh'), mode: 0o755 },
    { kind: 'file', path: 'rig/bin/busybox', data: busybox, mode: 0o755 },
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'file', path: 'rig/modules/load.list', data: Buffer.from(l1Order.join('\n') + '\n') },
    ...l1Order.map((k): CpioEntry => ({ kind: 'file', path: `rig/modules/${k}.ko`, data: koData.get(k)! })),
  ]));
  const depsText = [...kitClosures].map(([k, c]) => `${k}: ${c.join(' ')}`).join('\n') + '\n';
  const kit = buildCpioGz(withParents([
    { kind: 'file', path: 'init', data: script('kit-init.sh'), mode: 0o755 },
    { kind: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    { kind: 'file', path: 'usr/bin/lspci', data: script('kit-lspci.sh'), mode: 0o755 },
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'file', path: 'lib/modules/deps', data: Buffer.from(depsText) },
    ...kitAll.map((k): CpioEntry => ({ kind: 'file', path: `lib/modules/${k}.ko`, data: koData.get(k)! })),
    ...tools.entries,
  ]));

  // Write beside the final place and rename, so a concurrent or interrupted build never
  // leaves a half-written image under the final name.
  fs.mkdirSync(rigBuildDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(rigBuildDir, `.img-${key}-`));
  fs.chmodSync(tmp, 0o755);
  const image: RigImage = {
    dir, key, kernelPackage, kernelPackageVersion: kernelVersion, busyboxVersion, kernelRelease: release,
    vmlinuz: path.join(dir, 'vmlinuz'), l1Initrd: path.join(dir, 'l1-initrd.cpio.gz'), kitInitrd: path.join(dir, 'kit-initrd.cpio.gz'),
    l1Modules: l1Order, kitModules: [...kitClosures.keys()],
    sizes: { vmlinuz: (vmlinuz as Buffer).length, l1Initrd: l1.length, kitInitrd: kit.length },
    buildSeconds: (Date.now() - started) / 1000,
  };
  fs.writeFileSync(path.join(tmp, 'vmlinuz'), vmlinuz);
  fs.writeFileSync(path.join(tmp, 'l1-initrd.cpio.gz'), l1);
  fs.writeFileSync(path.join(tmp, 'kit-initrd.cpio.gz'), kit);
  fs.writeFileSync(path.join(tmp, 'manifest.json'), JSON.stringify(image, null, 2) + '\n');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(tmp, dir);
  pruneOldImages(key, kernelDeb, busyboxDeb, ...tools.debs);
  log(`built in ${image.buildSeconds.toFixed(1)} s: vmlinuz ${mb(image.sizes.vmlinuz)}, L1 initramfs ${mb(l1.length)} ` +
    `(${l1Order.length} modules), kit initramfs ${mb(kit.length)} (${kitAll.length} modules)`);
  return image;
}

/** Drops images and packages of older inputs, so build/rig does not grow without bound. */
function pruneOldImages(key: string, ...keepDebs: string[]): void {
  for (const f of fs.readdirSync(rigBuildDir)) {
    const p = path.join(rigBuildDir, f);
    if (/^img-[0-9a-f]+$/.test(f) && f !== `img-${key}`) fs.rmSync(p, { recursive: true, force: true });
    // Left by a build that was interrupted; an hour is far longer than any build takes.
    if (f.startsWith('.img-') && Date.now() - fs.statSync(p).mtimeMs > 3600e3) fs.rmSync(p, { recursive: true, force: true });
  }
  const debDir = path.dirname(keepDebs[0]);
  for (const f of fs.readdirSync(debDir)) {
    const p = path.join(debDir, f);
    if (f.endsWith('.deb') && !keepDebs.includes(p)) fs.rmSync(p, { force: true });
  }
}

function mb(n: number): string {
  return `${(n / 1048576).toFixed(1)} MB`;
}

if (require.main === module) {
  ensureImage({ log: (l) => console.log(`rig: ${l}`), force: process.argv.includes('--force') }).then(
    (img) => console.log(`rig: image ${img.key} in ${img.dir} (kernel ${img.kernelRelease})`),
    (e: Error) => {
      console.error(`rig: ${e instanceof RigBuildError ? e.message : e.stack}`);
      process.exit(1);
    },
  );
}
