// Bounded memory the manager keeps per VM: console scroll-back and log lines.

/**
 * The recent bytes of one console stream. `end` counts every byte ever appended, so a
 * subscriber can tell where a chunk sits in the stream.
 */
export class ScrollbackBuffer {
  private chunks: Uint8Array[] = [];
  private bytes = 0;
  private _end = 0;

  constructor(readonly capacity: number) {}

  get end(): number {
    return this._end;
  }

  append(data: Uint8Array): void {
    if (data.length === 0) return;
    this._end += data.length;
    if (data.length >= this.capacity) {
      this.chunks = [data.slice(data.length - this.capacity)];
      this.bytes = this.capacity;
      return;
    }
    this.chunks.push(data);
    this.bytes += data.length;
    while (this.bytes > this.capacity) {
      const first = this.chunks[0];
      const excess = this.bytes - this.capacity;
      if (first.length <= excess) {
        this.chunks.shift();
        this.bytes -= first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.bytes -= excess;
      }
    }
  }

  /** The retained bytes and the stream offset of the first one. */
  snapshot(): { offset: number; data: Uint8Array } {
    const data = new Uint8Array(this.bytes);
    let at = 0;
    for (const c of this.chunks) {
      data.set(c, at);
      at += c.length;
    }
    return { offset: this._end - this.bytes, data };
  }
}

/** The last `capacity` lines of a log; partial lines are joined until their newline. */
export class LogBuffer {
  private lines: string[] = [];
  private partial = '';

  constructor(readonly capacity: number, private readonly maxLineLength = 2000) {}

  /** A complete line (it may contain newlines: each becomes a line). */
  addLine(line: string): void {
    for (const l of line.replace(/\r/g, '').split('\n')) this.push(l);
  }

  /** A piece of a text stream such as stderr. */
  addText(text: string): void {
    const parts = (this.partial + text.replace(/\r/g, '')).split('\n');
    this.partial = parts.pop() ?? '';
    if (this.partial.length > this.maxLineLength) {
      this.push(this.partial);
      this.partial = '';
    }
    for (const p of parts) this.push(p);
  }

  /** Ends a text stream: its unterminated last line becomes a line. */
  flushText(): void {
    if (this.partial) this.push(this.partial);
    this.partial = '';
  }

  tail(count = this.capacity): string[] {
    return this.lines.slice(Math.max(0, this.lines.length - count));
  }

  private push(line: string): void {
    this.lines.push(line.length > this.maxLineLength ? `${line.slice(0, this.maxLineLength)}…` : line);
    if (this.lines.length > this.capacity) this.lines.splice(0, this.lines.length - this.capacity);
  }
}
