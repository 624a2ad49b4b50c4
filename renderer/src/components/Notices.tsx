import { useEffect } from 'react';
import type { Notice, VmStore } from '../store';

const INFO_NOTICE_MS = 6000;

function NoticeItem({ notice, store }: { notice: Notice; store: VmStore }) {
  useEffect(() => {
    if (notice.kind !== 'info') return;
    const timer = setTimeout(() => store.dismiss(notice.id), INFO_NOTICE_MS);
    return () => clearTimeout(timer);
  }, [notice, store]);
  return (
    <div className={`notice notice-${notice.kind}`} role={notice.kind === 'error' ? 'alert' : 'status'}>
      <span>{notice.text}</span>
      <button type="button" className="icon-button" aria-label="Dismiss" onClick={() => store.dismiss(notice.id)}>✕</button>
    </div>
  );
}

export function Notices({ notices, store }: { notices: readonly Notice[]; store: VmStore }) {
  return (
    <div className="notices" aria-label="Notifications">
      {notices.map((n) => <NoticeItem key={n.id} notice={n} store={store} />)}
    </div>
  );
}
