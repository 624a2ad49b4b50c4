#!/usr/bin/env node
// `npm start` (after the build): opens the Electron window when Electron's binary is
// installed; otherwise tries once to download it (npm ci here skips install scripts)
// and, if that fails, serves the same UI in browser mode and prints its URL.
//   --browser   browser mode even when Electron is installed
//   --port N    browser mode's port (default: a free one)
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const electronDir = path.join(root, 'node_modules', 'electron');
const args = process.argv.slice(2);

/** The Electron executable, or null when the binary is not installed. */
function electronBinary() {
  try {
    const relative = fs.readFileSync(path.join(electronDir, 'path.txt'), 'utf8').trim();
    const exe = path.join(electronDir, 'dist', relative);
    fs.accessSync(exe, fs.constants.X_OK);
    return exe;
  } catch {
    return null;
  }
}

function tryDownloadElectron() {
  if (!fs.existsSync(path.join(electronDir, 'install.js'))) return false;
  console.log('Electron\'s binary is not installed; trying to download it once (node node_modules/electron/install.js)…');
  const r = spawnSync(process.execPath, [path.join(electronDir, 'install.js')], {
    cwd: electronDir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000, encoding: 'utf8',
  });
  return r.status === 0 && electronBinary() !== null;
}

function startElectron(exe) {
  // ELECTRON_RUN_AS_NODE in the environment would turn the app into plain Node.
  const env = { ...process.env };
  delete env.ELECTRON_RUN_AS_NODE;
  const child = spawn(exe, [root, ...args.filter((a) => a !== '--electron')], { stdio: 'inherit', env });
  const forward = (signal) => child.kill(signal);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}

async function startBrowserMode(why) {
  if (why) console.log(`${why}; starting browser mode instead.`);
  const entry = path.join(root, 'dist', 'main', 'web', 'browser-mode.js');
  if (!fs.existsSync(entry)) {
    console.error('Porthole is not built: run npm run build first.');
    process.exit(1);
  }
  await import(pathToFileURL(entry).href);
}

if (args.includes('--browser') || process.env.PORTHOLE_BROWSER_MODE === '1') {
  await startBrowserMode(null);
} else {
  let exe = electronBinary();
  if (!exe && process.env.PORTHOLE_SKIP_ELECTRON_DOWNLOAD !== '1' && tryDownloadElectron()) exe = electronBinary();
  if (exe) startElectron(exe);
  else await startBrowserMode('Electron\'s binary is not available (it could not be downloaded)');
}
