// A sine tone to play and the check of what came out: the tone's PCM (S16_LE stereo) and an
// analysis of a WAV file (QEMU's wav audiodev) — where sound starts and ends, its frequency from
// zero crossings, and the longest silent gap inside it.

export function sineS16Stereo(hz: number, seconds: number, rate = 48000, amplitude = 0.5): Buffer {
  const frames = Math.round(seconds * rate);
  const out = Buffer.alloc(frames * 4);
  for (let i = 0; i < frames; i++) {
    const v = Math.round(Math.sin((2 * Math.PI * hz * i) / rate) * amplitude * 32767);
    out.writeInt16LE(v, 4 * i);
    out.writeInt16LE(v, 4 * i + 2);
  }
  return out;
}

export interface ToneReport {
  rate: number;
  channels: number;
  /** Seconds from the first to the last loud sample. */
  soundSeconds: number;
  /** Frequency from the zero crossings of the first channel inside the sound. */
  hz: number;
  /** The longest run of near-silence inside the sound, in ms. */
  longestGapMs: number;
  peak: number;
}

/** Analyses a 16-bit PCM WAV (its data chunk may say 0 bytes while QEMU still writes it). */
export function analyseWav(file: Buffer, loud = 2000): ToneReport {
  if (file.length < 44 || file.toString('latin1', 0, 4) !== 'RIFF' || file.toString('latin1', 8, 12) !== 'WAVE') {
    throw new Error(`not a WAV file (${file.length} bytes)`);
  }
  let at = 12;
  let rate = 0;
  let channels = 0;
  let bits = 0;
  let data = -1;
  while (at + 8 <= file.length) {
    const id = file.toString('latin1', at, at + 4);
    const size = file.readUInt32LE(at + 4);
    if (id === 'fmt ') {
      channels = file.readUInt16LE(at + 10);
      rate = file.readUInt32LE(at + 12);
      bits = file.readUInt16LE(at + 22);
    } else if (id === 'data') {
      data = at + 8;
      break;
    }
    at += 8 + size + (size & 1);
  }
  if (data < 0 || bits !== 16 || channels < 1 || rate === 0) throw new Error(`WAV format not 16-bit PCM (bits ${bits}, channels ${channels}, rate ${rate})`);
  const frameBytes = 2 * channels;
  const frames = Math.floor((file.length - data) / frameBytes);
  const sample = (i: number) => file.readInt16LE(data + i * frameBytes);
  let first = -1;
  let last = -1;
  let peak = 0;
  for (let i = 0; i < frames; i++) {
    const a = Math.abs(sample(i));
    if (a > peak) peak = a;
    if (a >= loud) {
      if (first < 0) first = i;
      last = i;
    }
  }
  if (first < 0) return { rate, channels, soundSeconds: 0, hz: 0, longestGapMs: 0, peak };
  let crossings = 0;
  let prev = sample(first);
  let quiet = 0;
  let longest = 0;
  // Near-silence: below a tenth of "loud" for longer than a half period is a gap, not a zero crossing.
  for (let i = first; i <= last; i++) {
    const s = sample(i);
    if ((prev < 0 && s >= 0) || (prev >= 0 && s < 0)) crossings++;
    prev = s;
    if (Math.abs(s) < loud / 10) quiet++;
    else quiet = 0;
    if (quiet > longest) longest = quiet;
  }
  const seconds = (last - first + 1) / rate;
  return { rate, channels, soundSeconds: seconds, hz: crossings / 2 / seconds, longestGapMs: (longest / rate) * 1000, peak };
}
