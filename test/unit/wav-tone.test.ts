// The rig's tone check (test/rig/wav-tone.ts) on WAV files made here: it finds a tone's length and
// frequency, sees a gap inside it, and refuses what is not 16-bit PCM WAV.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { analyseWav, sineS16Stereo } from '../rig/wav-tone';

function wav(pcm: Buffer, rate: number, channels: number, dataSize = pcm.length): Buffer {
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'latin1');
  h.writeUInt32LE(36 + dataSize, 4);
  h.write('WAVEfmt ', 8, 'latin1');
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20);
  h.writeUInt16LE(channels, 22);
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * channels * 2, 28);
  h.writeUInt16LE(channels * 2, 32);
  h.writeUInt16LE(16, 34);
  h.write('data', 36, 'latin1');
  h.writeUInt32LE(dataSize, 40);
  return Buffer.concat([h, pcm]);
}

test('a 1 kHz tone between silences: its length and frequency; a dropped 100 ms inside shows as a gap', () => {
  const silence = Buffer.alloc(44100 * 4 / 2);
  const tone = sineS16Stereo(1000, 2, 44100);
  // QEMU's header says 0 data bytes until it closes the file: the analysis reads to the end anyway.
  const r = analyseWav(wav(Buffer.concat([silence, tone, silence]), 44100, 2, 0));
  assert.ok(Math.abs(r.soundSeconds - 2) < 0.01, `${r.soundSeconds}`);
  assert.ok(Math.abs(r.hz - 1000) < 5, `${r.hz}`);
  assert.ok(r.longestGapMs < 1, `${r.longestGapMs}`);
  assert.equal(r.rate, 44100);
  const gapped = Buffer.from(tone);
  gapped.fill(0, 44100 * 4 / 2, 44100 * 4 / 2 + 4410 * 4);
  const g = analyseWav(wav(gapped, 44100, 2));
  assert.ok(Math.abs(g.longestGapMs - 100) < 2, `${g.longestGapMs}`);
  assert.equal(analyseWav(wav(silence, 44100, 2)).soundSeconds, 0);
  assert.throws(() => analyseWav(Buffer.from('not a wav file at all, certainly not one of 44 bytes')), /not a WAV file/);
});
