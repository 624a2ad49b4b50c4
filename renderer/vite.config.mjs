// Builds the renderer into dist/renderer/. The same files are loaded by Electron
// (file://, hence relative asset paths) and served by the browser-mode server.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const here = path.dirname(fileURLToPath(import.meta.url));

export default defineConfig({
  root: here,
  base: './',
  plugins: [react()],
  build: {
    outDir: path.resolve(here, '../dist/renderer'),
    emptyOutDir: true,
    sourcemap: true,
    target: 'es2022',
    // One small app: no need to warn about chunk sizes (xterm.js alone is ~300 KiB).
    chunkSizeWarningLimit: 1024,
  },
});
