// A library row's live sparkline: the VM's exits per second over the last minute, drawn on
// a small canvas from the shared 1 s vm-stats feed (no React render per sample).
import { useEffect, useRef } from 'react';
import { formatRate } from '../perf';
import { exitsPerSecond, type StatsFeeds } from '../stats-feed';

const POINTS = 60;
const WIDTH = 96;
const HEIGHT = 22;

export function Sparkline({ vmId, feeds }: { vmId: string; feeds: StatsFeeds }) {
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const labelRef = useRef<HTMLSpanElement>(null);

  useEffect(() => {
    const values: number[] = [];
    const stop = feeds.subscribe(vmId, 1000, (sample) => {
      if (!(sample.intervalMs > 0)) return;
      values.push(exitsPerSecond(sample));
      if (values.length > POINTS) values.shift();
      const canvas = canvasRef.current;
      const label = labelRef.current;
      if (label) label.textContent = `${formatRate(values[values.length - 1], 'count')} exits/s`;
      if (!canvas) return;
      const ratio = window.devicePixelRatio || 1;
      if (canvas.width !== WIDTH * ratio) {
        canvas.width = WIDTH * ratio;
        canvas.height = HEIGHT * ratio;
      }
      const ctx = canvas.getContext('2d');
      if (!ctx) return;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, WIDTH, HEIGHT);
      const max = Math.max(1, ...values);
      const step = WIDTH / (POINTS - 1);
      const x0 = WIDTH - (values.length - 1) * step;
      const y = (v: number) => HEIGHT - 2 - (v / max) * (HEIGHT - 4);
      ctx.beginPath();
      values.forEach((v, i) => (i === 0 ? ctx.moveTo(x0, y(v)) : ctx.lineTo(x0 + i * step, y(v))));
      ctx.strokeStyle = getComputedStyle(canvas).color;
      ctx.lineWidth = 1.25;
      ctx.stroke();
      canvas.dataset.points = String(values.length);
      canvas.dataset.last = String(Math.round(values[values.length - 1]));
    });
    return stop;
  }, [vmId, feeds]);

  return (
    <span className="sparkline">
      <canvas ref={canvasRef} className="sparkline-canvas" style={{ width: WIDTH, height: HEIGHT }} aria-hidden="true" />
      <span ref={labelRef} className="sparkline-label">… exits/s</span>
    </span>
  );
}
