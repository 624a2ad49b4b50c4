// Renderer entry. In Electron the preload has already set window.porthole; in browser
// mode nothing has, so the page installs the HTTP/WebSocket client itself.
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import '@xterm/xterm/css/xterm.css';
import './styles.css';
import { createWebClient } from '../../main/api/web-client';
import { App } from './App';
import { VmStore } from './store';

function installApi(): void {
  const w = window as Partial<Window>;
  if (!w.porthole) window.porthole = createWebClient();
}

installApi();
const store = new VmStore(window.porthole);
store.start();

const rootElement = document.getElementById('root');
if (!rootElement) throw new Error('index.html has no #root element');
createRoot(rootElement).render(
  <StrictMode>
    <App store={store} />
  </StrictMode>,
);
