// How a command's failure reads to a person: the line of its stderr that says what went wrong. Pure; the run
// machine builds the stored reason with it.

const TRACEBACK_HEADER = /^Traceback \(most recent call last\):\s*$/;
const TRACEBACK_FRAME = /^\s+File ".*", line \d+/;

/**
 * The stored text of a command's stderr tail: a Python traceback's error line (`ValueError: …`, the first
 * unindented line after its last frame) comes first, then the whole tail, so a one-line view (list, top) shows
 * the error and not "Traceback (most recent call last):". Any other tail is kept as it is.
 */
export function reasonFromStderr(tail: string): string {
  const lines = tail.split('\n');
  const error = tracebackErrorLine(lines);
  return error === undefined ? tail : `${error}\n${tail}`;
}

/** The error line of the last traceback in `lines` (also when the tail lost its header), if there is one. */
function tracebackErrorLine(lines: string[]): string | undefined {
  let lastFrame = -1;
  let header = -1;
  lines.forEach((line, i) => {
    if (TRACEBACK_HEADER.test(line)) header = i;
    if (TRACEBACK_FRAME.test(line)) lastFrame = i;
  });
  if (header < 0 && lastFrame < 0) return undefined;
  for (let i = Math.max(header, lastFrame) + 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trim() !== '' && !/^\s/.test(line)) return line.trim();
  }
  return undefined;
}
