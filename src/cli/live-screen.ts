import { displayWidth, type ScreenSize } from './top-view.js';

// The terminal of a full-screen view (`runwarden top`): the alternate screen, no cursor, no line wrap and raw
// keys while it runs, and all of that undone exactly once however the view ends.

const ENTER = '\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J';
const LEAVE = '\x1b[?7h\x1b[?25h\x1b[?1049l';

export class LiveScreen {
  private entered = false;
  private rawModeSet = false;
  private onKey: ((key: Buffer) => void) | undefined;

  constructor(
    private readonly input: NodeJS.ReadStream,
    private readonly output: NodeJS.WriteStream,
  ) {}

  size(): ScreenSize {
    return { columns: this.output.columns || 80, rows: this.output.rows || 24 };
  }

  /** Switches to the alternate screen and hands every key to `onKey` (without echo) when stdin is a terminal. */
  enter(onKey: (key: Buffer) => void): void {
    this.entered = true;
    this.output.write(ENTER);
    if (this.input.isTTY) {
      this.input.setRawMode(true);
      this.rawModeSet = true;
    }
    this.onKey = onKey;
    this.input.on('data', onKey);
    this.input.resume();
  }

  /**
   * Draws a frame: each line on its own row, addressed directly (no newline can scroll the screen); rows
   * without a line are cleared. The last line goes on the bottom row: it is the status line.
   */
  draw(lines: string[]): void {
    const { columns, rows } = this.size();
    const body = lines.slice(0, -1).slice(0, Math.max(0, rows - 1));
    const status = lines.at(-1);
    const atRow = (row: number, text: string) =>
      // Erasing the rest of a full row would erase its last character on some terminals.
      `\x1b[${row};1H${text}${displayWidth(text) < columns ? '\x1b[K' : ''}`;
    let frame = '';
    for (let row = 1; row < rows; row++) frame += atRow(row, body[row - 1] ?? '');
    frame += atRow(rows, status ?? '');
    this.output.write(frame);
  }

  /** Leaves the alternate screen and shows the cursor again; raw mode off. Safe to call more than once. */
  restore(): void {
    if (this.rawModeSet) {
      this.rawModeSet = false;
      try {
        this.input.setRawMode(false);
      } catch {
        // the terminal is gone (SIGHUP): nothing left to restore
      }
    }
    if (this.onKey) {
      this.input.off('data', this.onKey);
      this.onKey = undefined;
      this.input.pause();
    }
    if (this.entered) {
      this.entered = false;
      try {
        this.output.write(LEAVE);
      } catch {
        // as above
      }
    }
  }
}
