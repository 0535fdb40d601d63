// Errors a user can cause carry the field or argument they concern and map to exit code 2;
// everything else is a runtime error (exit 1). See DESIGN §7.

export class UsageError extends Error {
  readonly exitCode = 2;
  constructor(message: string, readonly field?: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A configuration value is missing, malformed or contradicts another; `field` is its dotted path. */
export class ConfigError extends UsageError {
  constructor(field: string, message: string) {
    // The configuration as a whole (its file, its top) is field "config": named once, not "config: config:".
    super(field === 'config' ? `config: ${message}` : `config: ${field}: ${message}`, field);
    this.name = 'ConfigError';
  }
}

/** Every problem found in one configuration (two or more), each naming its field, so one edit fixes them all. */
export class ConfigProblems extends ConfigError {
  constructor(readonly problems: ConfigError[]) {
    super('config', `${problems.length} problems:\n${problems.map((p) => `  ${p.message.replace(/^config: /, '')}`).join('\n')}`);
    this.name = 'ConfigProblems';
  }
}

/** Throws what `problems` found: nothing, the one error, or all of them at once. */
export function throwConfigProblems(problems: ConfigError[]): void {
  if (problems.length === 1) throw problems[0];
  if (problems.length > 1) throw new ConfigProblems(problems);
}

export class DuplicateRunError extends UsageError {
  constructor(readonly number: number) {
    super(`run ${number} already exists`, 'number');
    this.name = 'DuplicateRunError';
  }
}

export class RunNotFoundError extends Error {
  readonly exitCode = 1;
  constructor(readonly number: number) {
    super(`run ${number} not found`);
    this.name = 'RunNotFoundError';
  }
}

/**
 * An operator command that the run's current state does not allow (or a run that changed under it); the message
 * names the run, its state and the way out.
 */
export class RefusedError extends Error {
  readonly exitCode = 1;
  constructor(readonly number: number, message: string) {
    super(message);
    this.name = 'RefusedError';
  }
}

/** A run an operator selected changed before the write (its state or lease token); it was left alone. */
export class ChangedMeanwhileError extends RefusedError {
  constructor(number: number, message: string) {
    super(number, message);
    this.name = 'ChangedMeanwhileError';
  }
}

/** The store cannot be opened or reached; the message names where, never a password. */
export class StoreUnavailableError extends Error {
  readonly exitCode = 1;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/**
 * The store this process opened is no longer the one at its location (a SQLite file deleted, renamed or
 * replaced under a running daemon): anything written now would be lost or split between two files. Fatal.
 */
export class StoreReplacedError extends Error {
  readonly exitCode = 1;
  constructor(message: string) {
    super(message);
    this.name = 'StoreReplacedError';
  }
}

export function exitCodeOf(error: unknown): number {
  if (error && typeof error === 'object' && 'exitCode' in error && typeof error.exitCode === 'number') {
    return error.exitCode;
  }
  return 1;
}
