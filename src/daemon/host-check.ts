import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, rmdir, stat } from 'node:fs/promises';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import type { Config, StageConfig } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { stagesOf } from '../policy/pipeline.js';

// What a host needs before any run can start on it (issue 12 fault 5): the command's executable, its working
// directory, and writable output and log directories. A daemon checks it at start (and `process N` before it
// claims) and refuses with exit 2 naming the field; at run time the same check tells a host fault (every run
// would fail the same way, so the host pauses claiming) from a problem of one run, and decides when to resume.

export interface HostProblem {
  /** The configuration key concerned, e.g. `process.log_dir`. */
  field: string;
  message: string;
}

function errorText(error: unknown): string {
  if (error && typeof error === 'object' && 'code' in error && typeof error.code === 'string') {
    const message = error instanceof Error ? error.message : String(error);
    return message.startsWith(`${error.code}:`) ? message : `${error.code}: ${message}`;
  }
  return error instanceof Error ? error.message : String(error);
}

async function isExecutableFile(path: string): Promise<boolean> {
  try {
    if (!(await stat(path)).isFile()) return false;
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The command's PATH: process.env.PATH as the daemon passes it on, unless the stage's env sets its own. */
function commandPath(stage: StageConfig): string {
  return stage.env.PATH ?? process.env.PATH ?? '';
}

async function checkExecutable(stage: StageConfig, argv: string[], field: string): Promise<HostProblem | null> {
  const argv0 = argv[0];
  // A placeholder in argv[0] names a per-run executable: nothing to check before a run.
  if (argv0 === undefined || argv0 === '' || /[{}]/.test(argv0)) return null;
  if (argv0.includes('/')) {
    // spawn resolves a relative path in the command's working directory
    const path = isAbsolute(argv0) ? argv0 : resolve(stage.cwd, argv0);
    if (await isExecutableFile(path)) return null;
    return { field, message: `the executable ${JSON.stringify(argv0)} (${path}) does not exist or is not executable` };
  }
  for (const dir of commandPath(stage).split(delimiter)) {
    if (dir !== '' && (await isExecutableFile(join(resolve(stage.cwd, dir), argv0)))) return null;
  }
  return { field, message: `the executable ${JSON.stringify(argv0)} is not found in PATH (${commandPath(stage)})` };
}

async function checkDirectory(path: string): Promise<string | null> {
  try {
    if (!(await stat(path)).isDirectory()) return `${path} is not a directory`;
    return null;
  } catch (error) {
    return `${path}: ${errorText(error)}`;
  }
}

/** Creates `path` if needed and proves it writable by creating and removing an entry (root ignores modes). */
async function checkWritableDirectory(path: string): Promise<string | null> {
  try {
    await mkdir(path, { recursive: true });
    const probe = await mkdtemp(join(path, '.runwarden-write-check-'));
    await rmdir(probe);
    return null;
  } catch (error) {
    return `cannot create or write ${path}: ${errorText(error)}`;
  }
}

/**
 * Every problem found, in the order a run would meet them; empty when the host can start runs. Every stage of
 * the pipeline is checked (its cwd, command, check, output_root and log_dir), or only `stage` when given (what
 * one task's failure to start says about the host). A key a stage inherits from `process:` is named there.
 */
export async function hostProblems(config: Config, stage?: string): Promise<HostProblem[]> {
  const problems: HostProblem[] = [];
  const seen = new Set<string>();
  const staged = config.stages !== undefined && config.stages.length > 0;
  const add = (problem: HostProblem | null) => {
    if (!problem) return;
    const key = `${problem.field}\0${problem.message}`;
    if (seen.has(key)) return;
    seen.add(key);
    problems.push(problem);
  };
  for (const s of stagesOf(config).filter((s) => stage === undefined || s.name === stage)) {
    // a stage's own key, or the `process:` key it inherits
    const fieldOf = (key: 'cwd' | 'command' | 'check' | 'output_root' | 'log_dir') =>
      !staged || ((key === 'cwd' || key === 'output_root' || key === 'log_dir') && s[key] === config.process[key])
        ? `process.${key}`
        : `stages.${s.name}.${key}`;
    const cwd = await checkDirectory(s.cwd);
    if (cwd) add({ field: fieldOf('cwd'), message: `the working directory ${cwd}` });
    add(await checkExecutable(s, s.command, fieldOf('command')));
    if (s.check.length > 0) add(await checkExecutable(s, s.check, fieldOf('check')));
    for (const key of ['output_root', 'log_dir'] as const) {
      const problem = await checkWritableDirectory(s[key]);
      if (problem) add({ field: fieldOf(key), message: problem });
    }
  }
  return problems;
}

/** One line for logs and the host document: `process.log_dir: cannot create or write …`. */
export function describeHostProblems(problems: readonly HostProblem[]): string {
  return problems.map((p) => `${p.field}: ${p.message}`).join('; ');
}

/** For `daemon` and `process N`: refuses to start (exit 2) naming the first field at fault, and the others. */
export async function assertHostReady(config: Config): Promise<void> {
  const problems = await hostProblems(config);
  if (problems.length === 0) return;
  const [first, ...rest] = problems;
  throw new ConfigError(
    first!.field,
    `${first!.message}` +
      (rest.length > 0 ? `; also ${describeHostProblems(rest)}` : '') +
      '. No run can start on this host until this is fixed.',
  );
}

/** A preflight or spawn error the host's check explains: an interruption of the run, not its failure. */
export class HostFaultError extends Error {
  constructor(
    message: string,
    /** What the host's check found (AttemptFailure.hostFault). */
    readonly hostFault: string,
  ) {
    super(message);
    this.name = 'HostFaultError';
  }
}

/**
 * What the host's check says about an attempt that could not start: a description of the host's problems
 * when there are any (every run would fail the same way), undefined when the fault is this run's own.
 */
export async function hostFaultBehind(config: Config, stage?: string): Promise<string | undefined> {
  try {
    const problems = await hostProblems(config, stage);
    return problems.length > 0 ? describeHostProblems(problems) : undefined;
  } catch {
    return undefined;
  }
}
