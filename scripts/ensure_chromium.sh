#!/usr/bin/env bash
# The real-browser test drives Debian's Chromium through Playwright (Playwright's own browser download is not used).
# Install it when missing and we can (root with apt-get); otherwise the browser test reports it as missing.
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser test…"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
    echo "warning: could not install chromium; the browser test will fail" >&2
else
  echo "warning: chromium not found at /usr/bin/chromium and cannot be installed here" >&2
fi
exit 0
