#!/usr/bin/env bash
# Sets the last byte of build/guests/optionrom.bin so all its bytes sum to 0 mod 256,
# as the PC option ROM format requires. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
rom=build/guests/optionrom.bin
[ -f "$rom" ] || exit 0
node -e '
const fs = require("fs");
const file = process.argv[1];
const rom = fs.readFileSync(file);
let sum = 0;
for (let i = 0; i < rom.length - 1; i++) sum = (sum + rom[i]) & 0xff;
const want = (256 - sum) & 0xff;
if (rom[rom.length - 1] !== want) { rom[rom.length - 1] = want; fs.writeFileSync(file, rom); }
' "$rom"
