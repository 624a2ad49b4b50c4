// A node:test reporter for test runs inside the rig's L1: one JSON line per test file when
// that file is done, with its tests as a tree (name, outcome, error, children), so the rig
// host can fold them into its own report (test/rig/kvm-venue.test.ts). CommonJS with
// `export =`, so that node --test-reporter=FILE gets the generator itself.
import type { ReportedFile, ReportedTest } from './test-events';

interface TestEventData {
  name?: string;
  nesting?: number;
  file?: string;
  skip?: string | boolean;
  todo?: string | boolean;
  details?: { duration_ms?: number; type?: string; error?: unknown };
}

/** The innermost cause of a node:test failure, with its message and stack. */
function describeError(e: unknown): { message: string; stack?: string } {
  let err = e as { message?: string; stack?: string; cause?: unknown; failureType?: string } | undefined;
  // node:test wraps the test's own error as `cause` of an ERR_TEST_FAILURE.
  while (err && err.failureType && err.cause) err = err.cause as typeof err;
  if (err && typeof err === 'object') return { message: String(err.message ?? err), stack: err.stack };
  return { message: String(e) };
}

const reason = (v: string | boolean | undefined): string | undefined => (v === undefined || v === false ? undefined : v === true ? '' : v);

async function* testEventsReporter(source: AsyncIterable<{ type: string; data: TestEventData }>): AsyncGenerator<string> {
  // Children finish before their parent: keep the finished ones per nesting level.
  let levels: ReportedTest[][] = [];
  for await (const { type, data } of source) {
    if (type === 'test:pass' || type === 'test:fail') {
      const n = data.nesting ?? 0;
      const node: ReportedTest = {
        name: data.name ?? '', suite: data.details?.type === 'suite', ok: type === 'test:pass',
        skip: reason(data.skip), todo: reason(data.todo), durationMs: data.details?.duration_ms ?? 0,
        children: levels[n + 1] ?? [],
        ...(type === 'test:fail' ? { error: describeError(data.details?.error) } : {}),
      };
      levels[n + 1] = [];
      (levels[n] ??= []).push(node);
    } else if (type === 'test:complete' && data.nesting === 0 && data.file && data.name === data.file) {
      const done: ReportedFile = { file: data.file, tests: levels[0] ?? [] };
      levels = [];
      yield JSON.stringify(done) + '\n';
    }
  }
}

export = testEventsReporter;
