#!/usr/bin/env bash
# The end-to-end tests drive Debian's Chromium through playwright-core (no browser
# download is possible here). Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "fixtures: installing chromium"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "fixtures: the end-to-end tests need Chromium: sudo apt-get install chromium" >&2
  exit 1
fi
