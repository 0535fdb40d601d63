import { existsSync, readFileSync } from 'node:fs';
import type { MachineDescription } from './machine.js';
import { formatValue, isMet, type BenchResult } from './result.js';

// docs/performance.md: generated, apart from the notes between the two markers, which a person writes and
// every run keeps.

export const NOTES_START = '<!-- notes:start (hand-written; kept by every bench run) -->';
export const NOTES_END = '<!-- notes:end -->';

const DEFAULT_NOTES = `These figures come from a shared 2-core virtual machine on which other work was running at the
same time; the ratios and the A/B alternation are there to make them usable anyway. The final figures will be
re-run on a quiet machine.`;

export interface Report {
  results: BenchResult[];
  machine: MachineDescription;
  commit: string;
  date: Date;
  elapsedMs: number;
  smoke: boolean;
}

function verdict(met: boolean | undefined): string {
  if (met === undefined) return '';
  return met ? 'met' : '**missed**';
}

function rows(report: Report): string[][] {
  const out: string[][] = [];
  for (const result of report.results) {
    result.figures.forEach((figure, i) => {
      out.push([
        i === 0 ? result.title : '',
        figure.name,
        formatValue(figure),
        figure.target?.text ?? '',
        verdict(isMet(figure)),
      ]);
    });
  }
  return out;
}

/** A plain-text table for the terminal. */
export function renderText(report: Report): string {
  const headers = ['Benchmark', 'Figure', 'Measured', 'Target', 'Met'];
  const body = rows(report).map((r) => r.map((cell) => cell.replace(/\*\*/g, '').replace(/`/g, '')));
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

/** Wraps prose at `width` columns like the hand-written docs; `indent` continues list items. */
function wrap(text: string, width = 110, indent = ''): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = indent + word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines.join('\n');
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|');
}

export function existingNotes(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  const text = readFileSync(file, 'utf8');
  const start = text.indexOf(NOTES_START);
  const end = text.indexOf(NOTES_END);
  if (start < 0 || end < start) return undefined;
  return text.slice(start + NOTES_START.length, end).trim();
}

export function renderMarkdown(report: Report, notes: string | undefined): string {
  const { machine } = report;
  const minutes = (report.elapsedMs / 60_000).toFixed(1);
  const lines: string[] = [];
  lines.push('# Performance', '');
  lines.push(
    '<!-- Written by `npm run bench` (bench/run-all.ts). Edit only the notes at the end; the rest is regenerated. -->',
    '',
  );
  lines.push(
    wrap(
      `Measured ${report.date.toISOString().replace(/\.\d+Z$/, 'Z')} on commit \`${report.commit}\` with Node ` +
        `${machine.node}; \`npm run bench\` took ${minutes} min.`,
    ),
    '',
  );
  lines.push('| Benchmark | Figure | Measured | Target | Met |', '| --- | --- | --- | --- | --- |');
  for (const row of rows(report)) lines.push(`| ${row.map(escapeCell).join(' | ')} |`);
  lines.push('');
  const details = report.results.flatMap((r) =>
    r.figures.filter((f) => f.detail).map((f) => wrap(`- ${r.title}, ${f.name}: ${f.detail}`, 110, '  ')),
  );
  if (details.length > 0) lines.push('Behind the figures:', '', ...details, '');

  lines.push('## Machine', '');
  lines.push(`- CPU: ${machine.cpu}, ${machine.cores} cores${machine.virtualised ? ' (virtual machine)' : ''}`);
  lines.push(`- Memory: ${machine.memoryGiB} GiB; ${machine.os}; ${machine.kernel}`);
  lines.push(`- Node ${machine.node}`);
  lines.push(
    wrap(
      `- 1-minute load average: ${machine.loadAtStart.toFixed(2)} at the start, ` +
        `${(machine.loadAtEnd ?? Number.NaN).toFixed(2)} at the end (above ${machine.cores} means other work ` +
        `competed for the cores)`,
      110,
      '  ',
    ),
    '',
  );

  lines.push('## How measured', '');
  lines.push(
    wrap(
        'Every benchmark runs in its own node process of compiled JavaScript (the source is compiled with the ' +
        "project's tsc into `node_modules/.cache/runwarden-bench/`), and so does every daemon it starts, as an " +
        'operator runs `node dist/src/cli/main.js`. Stores are real SQLite files in the OS temp directory; ' +
        'commands are real processes. Where a target is a ratio, both sides are measured in the same run, ' +
        'alternating.',
    ),
    '',
  );
  for (const result of report.results) {
    lines.push(`### ${result.title}`, '');
    for (const paragraph of result.how) lines.push(wrap(paragraph), '');
    if (result.notes.length > 0) {
      lines.push('In this run:', '');
      for (const note of result.notes) lines.push(wrap(`- ${note}`, 110, '  '));
      lines.push('');
    }
  }

  lines.push('## Notes', '', NOTES_START, '', notes ?? DEFAULT_NOTES, '', NOTES_END, '');
  return lines.join('\n');
}
