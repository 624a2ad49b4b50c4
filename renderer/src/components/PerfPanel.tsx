// The Performance tab: live graphs of a running VM's counters (uPlot), from the shared
// vm-stats feed at the chosen resolution. The history (last 10 minutes) lives in a ring
// buffer (perf.ts); drawing happens at most once per animation frame, and not while paused.
import { useEffect, useRef, useState } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { VmStatsCounter, VmSummary } from '../../../main/api/contract';
import {
  DEFAULT_INTERVAL_MS, RESOLUTIONS, StatsHistory, chartData, latestRate, chartSignature, exportFileName, formatRate, formatValue, historyCsv, historyJson, pickCharts,
  type ChartSpec,
} from '../perf';
import type { StatsFeeds } from '../stats-feed';

const PALETTE = ['#2f7ed8', '#e4572e', '#29a35a', '#9b5de5', '#f2a541', '#17becf', '#d62790', '#7f7f7f', '#bcbd22', '#8c564b'];
const CHART_HEIGHT = 190;

/**
 * Points a chart of `width` CSS pixels draws: one per two pixel columns. A 10-minute history
 * at 10 Hz is 6000 samples; every point drawn is a segment each frame, and half as many look
 * the same on a 190 px high line chart.
 */
function pointsFor(width: number): number {
  return Math.max(100, Math.round(width / 2));
}

/** The theme's text and grid colours, read once per drawn frame (light or dark, as the page is). */
const theme = { text: '#1d232b', grid: '#d5d9e0' };
function readTheme(): void {
  const css = getComputedStyle(document.documentElement);
  theme.text = css.getPropertyValue('--text').trim() || theme.text;
  theme.grid = css.getPropertyValue('--border').trim() || theme.grid;
}
const themedAxis = {
  stroke: () => theme.text,
  grid: { stroke: () => theme.grid, width: 1 },
  ticks: { stroke: () => theme.grid, width: 1 },
};

interface Plot {
  signature: string;
  chart: ChartSpec;
  plot: uPlot;
  host: HTMLDivElement;
  /** The newest value of each series, in words (also what a test reads). */
  now: HTMLDivElement;
  /** Whether the chart is on screen; one scrolled away is drawn again when it comes back. */
  visible: boolean;
  /** Samples came while it was off screen. */
  stale: boolean;
  /** Zoomed by a drag: it keeps its time span (and the data it was zoomed on) until Reset zoom. */
  zoomed: boolean;
}

/** "io 13.1k/s · hlt 2/s" (or "ep1-in 1.3 ms" for a latency chart): a chart's newest values. */
function nowText(chart: ChartSpec, history: StatsHistory): string {
  return chart.series.map((s) => `${s.label} ${formatValue(latestRate(history, s), chart.unit)}`).join(' · ');
}

function download(name: string, type: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function PerfPanel({ vm, feeds }: { vm: VmSummary; feeds: StatsFeeds }) {
  const [intervalMs, setIntervalMs] = useState(DEFAULT_INTERVAL_MS);
  const [paused, setPaused] = useState(false);
  const [zoomed, setZoomed] = useState(false);
  const [sampleCount, setSampleCount] = useState(0);
  const [chartTitles, setChartTitles] = useState<string[]>([]);
  const chartsRef = useRef<HTMLDivElement>(null);
  const historyRef = useRef(new StatsHistory(DEFAULT_INTERVAL_MS));
  const countersRef = useRef<VmStatsCounter[]>([]);
  const plotsRef = useRef<Plot[]>([]);
  const pausedRef = useRef(false);
  const zoomedRef = useRef(false);
  const frameRef = useRef(0);
  const resetZoomRef = useRef<() => void>(() => undefined);
  const visibilityRef = useRef<IntersectionObserver | null>(null);
  const running = vm.state === 'running' || vm.state === 'paused';

  const draw = () => {
    frameRef.current = 0;
    const host = chartsRef.current;
    if (!host || pausedRef.current) return;
    readTheme();
    const history = historyRef.current;
    const charts = pickCharts(countersRef.current);
    const width = Math.max(200, host.clientWidth - 4);
    const old = plotsRef.current;
    const next: Plot[] = [];
    for (const chart of charts) {
      const signature = chartSignature(chart);
      let p = old.find((o) => o.signature === signature);
      if (!p) {
        const el = document.createElement('div');
        el.className = 'perf-chart';
        el.dataset.chart = chart.id;
        const plot = new uPlot(plotOptions(chart, width), chartData(history, chart, pointsFor(width)), el);
        const now = document.createElement('div');
        now.className = 'perf-now muted';
        el.append(now);
        p = { signature, chart, host: el, plot, now, visible: true, stale: false, zoomed: false };
        visibilityRef.current?.observe(el);
      } else if (p.zoomed) {
        // A zoomed chart keeps the data it was zoomed on: uPlot keeps the scale but not the
        // index window across setData, and the window's samples do not change anyway.
      } else if (p.visible) {
        p.plot.setData(chartData(history, chart, pointsFor(width)), true);
        p.stale = false;
      } else {
        p.stale = true;
      }
      p.now.textContent = `Now: ${nowText(chart, history)}`;
      next.push(p);
    }
    for (const o of old) if (!next.includes(o)) { o.plot.destroy(); o.host.remove(); }
    next.forEach((p, i) => { if (host.children[i] !== p.host) host.insertBefore(p.host, host.children[i] ?? null); });
    plotsRef.current = next;
    const titles = next.map((p) => p.chart.title);
    setChartTitles((t) => (t.join('\u0000') === titles.join('\u0000') ? t : titles));
  };

  const plotOptions = (chart: ChartSpec, width: number): uPlot.Options => ({
    title: chart.title,
    width,
    height: CHART_HEIGHT,
    scales: { x: { time: true } },
    cursor: {
      drag: { x: true, y: false, setScale: true },
      // uPlot's own double-click reset would leave the other charts zoomed: reset them all.
      bind: { dblclick: () => () => { resetZoomRef.current(); return null; } },
    },
    // The newest values are in the line under the chart: a live legend would only show the cursor's.
    legend: { live: false },
    series: [
      {},
      ...chart.series.map((s, i) => ({
        label: s.label,
        stroke: PALETTE[i % PALETTE.length],
        width: 1,
        spanGaps: false,
        value: (_u: uPlot, v: number | null) => formatRate(v, chart.unit),
      })),
    ],
    axes: [{ ...themedAxis }, { ...themedAxis, size: 70, values: (_u: uPlot, values: number[]) => values.map((v) => formatRate(v, chart.unit)) }],
    hooks: {
      // A drag selection zooms (cursor.drag.setScale): stop following the newest samples until
      // "Reset zoom". (uPlot applies scales in a later microtask, so setScale cannot tell who set them.)
      setSelect: [(u: uPlot) => {
        const zoomedPlot = plotsRef.current.find((q) => q.plot === u);
        if (u.select.width > 0 && zoomedPlot) {
          zoomedPlot.zoomed = true;
          // Zoomed in, every sample counts: the whole history at full resolution, of which
          // uPlot draws only the span (after it has set the span's scale).
          requestAnimationFrame(() => {
            const { min, max } = u.scales.x;
            if (!zoomedPlot.zoomed || min === undefined || max === undefined) return;
            u.setData(chartData(historyRef.current, zoomedPlot.chart), false);
            u.setScale('x', { min, max });
          });
        }
        if (u.select.width > 0 && !zoomedRef.current) {
          zoomedRef.current = true;
          setZoomed(true);
        }
      }],
    },
  });

  const schedule = () => {
    if (!frameRef.current) frameRef.current = requestAnimationFrame(draw);
  };

  // One subscription per resolution; a new resolution starts a new history.
  useEffect(() => {
    if (!running) return undefined;
    historyRef.current = new StatsHistory(intervalMs);
    setSampleCount(0);
    // A zoom into the old history means nothing in the new one.
    for (const p of plotsRef.current) p.zoomed = false;
    zoomedRef.current = false;
    setZoomed(false);
    let count = 0;
    const stop = feeds.subscribe(vm.id, intervalMs, (sample) => {
      historyRef.current.push(sample);
      countersRef.current = sample.counters;
      count++;
      // The count shows that samples arrive; React work stays off the per-sample path at 10 Hz.
      if (count % 5 === 1) setSampleCount(historyRef.current.length);
      schedule();
    });
    return stop;
    // schedule and draw read refs only.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [vm.id, intervalMs, running, feeds]);

  // Charts scrolled out of view are not redrawn (the cost that matters at 10 Hz with many series).
  useEffect(() => {
    const observer = new IntersectionObserver((entries) => {
      let redraw = false;
      for (const e of entries) {
        const p = plotsRef.current.find((q) => q.host === e.target);
        if (!p) continue;
        p.visible = e.isIntersecting;
        if (p.visible && p.stale) redraw = true;
      }
      if (redraw) schedule();
    });
    visibilityRef.current = observer;
    for (const p of plotsRef.current) observer.observe(p.host);
    return () => {
      observer.disconnect();
      visibilityRef.current = null;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  // Follow the container's width.
  useEffect(() => {
    const host = chartsRef.current;
    if (!host) return undefined;
    const observer = new ResizeObserver(() => {
      const width = Math.max(200, host.clientWidth - 4);
      for (const p of plotsRef.current) p.plot.setSize({ width, height: CHART_HEIGHT });
    });
    observer.observe(host);
    return () => observer.disconnect();
  }, [running]); // the charts' container exists only while the VM runs

  useEffect(() => () => {
    cancelAnimationFrame(frameRef.current);
    for (const p of plotsRef.current) p.plot.destroy();
    plotsRef.current = [];
  }, []);

  const togglePause = () => {
    pausedRef.current = !pausedRef.current;
    setPaused(pausedRef.current);
    if (!pausedRef.current) schedule();
  };

  const resetZoom = () => {
    zoomedRef.current = false;
    setZoomed(false);
    const history = historyRef.current;
    for (const p of plotsRef.current) {
      p.plot.setData(chartData(history, p.chart, pointsFor(p.plot.width)), true);
      p.stale = false;
      p.zoomed = false;
    }
  };
  resetZoomRef.current = resetZoom;

  const exportAs = (kind: 'csv' | 'json') => {
    const history = historyRef.current;
    const name = exportFileName(vm.spec.name, Date.now(), kind);
    if (kind === 'csv') download(name, 'text/csv', historyCsv(history));
    else download(name, 'application/json', `${JSON.stringify(historyJson(history, { id: vm.id, name: vm.spec.name }), null, 1)}\n`);
  };

  if (!running) {
    return <p className="muted perf-idle">Start the VM to see its live performance graphs.</p>;
  }

  return (
    <div className="perf-panel">
      <div className="perf-toolbar" role="toolbar" aria-label="Performance graph controls">
        <label>
          Resolution{' '}
          <select value={intervalMs} onChange={(e) => setIntervalMs(Number(e.target.value))}>
            {RESOLUTIONS.map((r) => <option key={r.intervalMs} value={r.intervalMs}>{r.label}</option>)}
          </select>
        </label>
        <button type="button" onClick={togglePause} aria-pressed={paused}>{paused ? 'Resume graphs' : 'Pause graphs'}</button>
        <button type="button" onClick={resetZoom} disabled={!zoomed}>Reset zoom</button>
        <button type="button" onClick={() => exportAs('csv')}>Export CSV</button>
        <button type="button" onClick={() => exportAs('json')}>Export JSON</button>
        <span className="muted perf-status" role="status">
          {paused ? 'Paused · ' : ''}{zoomed ? 'Zoomed (drag on a graph to zoom) · ' : 'Drag on a graph to zoom · '}
          {sampleCount === 0 ? 'waiting for samples…' : `${sampleCount} samples, last 10 minutes kept`}
        </span>
      </div>
      <div ref={chartsRef} className="perf-charts" aria-label={chartTitles.length ? `Graphs: ${chartTitles.join(', ')}` : 'Graphs'} />
    </div>
  );
}
