// What text from a command or another tool may reach a person's terminal: escape sequences and control
// characters stripped, so a run field or a line of output cannot recolour, retitle, clear the screen or write
// the operator's clipboard (OSC 52). Pure; every face (top, show, list, logs' last line) and every stored
// failure reason go through here.

// Escape sequences (CSI, OSC, and the two-byte ones) a command may write to colour or retitle its terminal.
const ESCAPE_SEQUENCE = /\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?/g;
// Other C0 and C1 controls, DEL, and the bidi overrides that would reorder the rest of the line.
const CONTROL = /[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;
// The same without the newline, for text that keeps its lines.
const CONTROL_BUT_NEWLINE = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;

/**
 * `text` as it is safe to write to the operator's terminal on one line: escape sequences and control
 * characters gone, whitespace (newlines too) collapsed to single spaces.
 */
export function printable(text: string): string {
  return text
    .replace(ESCAPE_SEQUENCE, '')
    .replace(/[\t\n\v\f\r]/g, ' ')
    .replace(CONTROL, '')
    .replace(/\s+/g, ' ')
    .trim();
}

/**
 * `text` as it is safe to write to a terminal, keeping its lines: escape sequences and control characters
 * gone except newlines; tabs become spaces; a carriage return ends a line like a newline does (CRLF counts
 * once). For multi-line text a person reads, such as a stored failure reason (a traceback).
 */
export function printableLines(text: string): string {
  return text
    .replace(ESCAPE_SEQUENCE, '')
    .replace(/\r\n?/g, '\n')
    .replace(/[\t\v\f]/g, ' ')
    .replace(CONTROL_BUT_NEWLINE, '')
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n')
    .trim();
}
