import { CONSOLE_SHORTCUTS, SHORTCUTS } from '../shortcuts';
import { Modal } from './Modal';

export function ShortcutsDialog({ onClose }: { onClose(): void }) {
  const rows = [...Object.values(SHORTCUTS), ...CONSOLE_SHORTCUTS];
  return (
    <Modal title="Keyboard shortcuts" onClose={onClose}>
      <table className="shortcut-table">
        <thead><tr><th scope="col">Keys</th><th scope="col">Action</th></tr></thead>
        <tbody>
          {rows.map((s) => <tr key={s.keys}><td><kbd>{s.keys}</kbd></td><td>{s.description}</td></tr>)}
        </tbody>
      </table>
      <p className="muted">
        While the console has focus, keys go to the guest; only the Ctrl+Shift shortcuts stay with the app.
      </p>
      <div className="modal-actions">
        <button type="button" className="primary" autoFocus onClick={onClose}>Close</button>
      </div>
    </Modal>
  );
}
