// Text forms of IP addresses, as the C structs want them. No FFI here: config validation uses it
// too, without loading libslirp.

/** The 16 bytes of an IPv6 address in text ("fec0::15"), or undefined if the text is not one. */
export function ipv6Bytes(text: string): number[] | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groups = (part: string) => (part === '' ? [] : part.split(':'));
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const bytes: number[] = [];
  for (const g of [...head, ...new Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
    const v = parseInt(g, 16);
    bytes.push(v >> 8, v & 0xff);
  }
  return bytes;
}

/** Whether the first `length` bits of two IPv6 addresses (text) agree; false if either is not one. */
export function ipv6InPrefix(addr: string, prefix: string, length: number): boolean {
  const a = ipv6Bytes(addr);
  const p = ipv6Bytes(prefix);
  if (!a || !p) return false;
  for (let bit = 0; bit < length; bit++) {
    const mask = 0x80 >> (bit & 7);
    if ((a[bit >> 3] & mask) !== (p[bit >> 3] & mask)) return false;
  }
  return true;
}
