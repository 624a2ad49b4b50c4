// The Content-Security-Policy of the UI, in Electron and in browser mode.
// Scripts only from the app itself, no eval, no plugins, no framing, no form posts.
// Styles allow 'unsafe-inline' because xterm.js injects <style> elements at run time.

export function contentSecurityPolicy(connectSources: readonly string[] = []): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    `connect-src ${["'self'", ...connectSources].join(' ')}`,
    "worker-src 'none'",
    "object-src 'none'",
    "frame-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ].join('; ');
}
