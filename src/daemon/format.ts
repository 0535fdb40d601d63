/** `90000` → `1m30s`; for reasons and messages people read. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  let seconds = Math.round(ms / 1000);
  const parts: string[] = [];
  for (const [unit, size] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
  ] as const) {
    if (seconds >= size) {
      parts.push(`${Math.floor(seconds / size)}${unit}`);
      seconds %= size;
    }
  }
  if (seconds || parts.length === 0) parts.push(`${seconds}s`);
  return parts.join('');
}

/** Keeps a stored reason readable and bounded, whatever a command wrote. */
export function boundedReason(text: string, max = 2000): string {
  const clean = text.replace(/\r/g, '').trim();
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}
