// Turning a stage's command (and check) into the argv and environment of one attempt (DESIGN §5, §9). The argv
// is never handed to a shell: each element is substituted on its own and stays exactly one argument.

/** The stage a value set without one belongs to: the first wave's only stage. */
const FIRST_WAVE_STAGE = 'process';

export interface PlaceholderValues {
  number: number;
  name?: string;
  input?: string;
  /** The task's stage ({stage}, RUNWARDEN_STAGE); `process` when absent. */
  stage?: string;
  /** The attempt's output directory (output_root/{number06}, or output_root/{stage}/{number06} with stages:). */
  output: string;
  /**
   * The outputs of the stages above this one, by stage name ({upstream.STAGE.output}, RUNWARDEN_UPSTREAM_STAGE):
   * for each ancestor stage, the newest output its task registered (pipeline's upstreamOutputs).
   */
  upstream?: Readonly<Record<string, { output: string }>>;
  attempt: number;
  host: string;
  targets: string[];
  /** This attempt's resource values, e.g. {cores: 6}; each is also a placeholder. */
  resources: Record<string, number>;
  params: Record<string, unknown>;
}

/** Placeholders that do not depend on configuration. `{cores}` and friends come from process.resources. */
export const BUILTIN_PLACEHOLDERS = [
  'number',
  'number06',
  'name',
  'input',
  'output',
  'attempt',
  'host',
  'targets',
  'stage',
] as const;

/**
 * Names a resource may not take: they would shadow a built-in placeholder, the `params.` or `upstream.`
 * prefix, or one of the RUNWARDEN_* variables the command receives. Names starting with `upstream_` are
 * refused too (RUNWARDEN_UPSTREAM_<STAGE>): see isReservedResourceName.
 */
export const RESERVED_RESOURCE_NAMES: readonly string[] = [
  ...BUILTIN_PLACEHOLDERS,
  'params',
  'upstream',
  'run_number',
  'error_file',
  'daemon',
  'attempt_id',
];

/** Whether a resource name would clash with a placeholder or a RUNWARDEN_* variable (case-insensitive). */
export function isReservedResourceName(name: string): boolean {
  const upper = name.toUpperCase();
  return RESERVED_RESOURCE_NAMES.some((reserved) => reserved.toUpperCase() === upper) || upper.startsWith('UPSTREAM_');
}

/**
 * `{identifier}`, `{params.KEY}` or `{upstream.…}`. Braces around anything else (a space, a `$`, ...) are
 * literal text, so an awk or jq program in an argument passes through untouched. There is no escape for a
 * literal `{number}`.
 */
const PLACEHOLDER = /\{((?:params|upstream)\.[^{}\s]+|[A-Za-z_][A-Za-z0-9_]*)\}/g;

/** `{upstream.STAGE.output}`: the one upstream value a command can name. */
const UPSTREAM_OUTPUT = /^upstream\.([^.]+)\.output$/;

/** The stage an `upstream.STAGE.output` placeholder names, or undefined when the name is not of that form. */
export function upstreamStageOf(name: string): string | undefined {
  return UPSTREAM_OUTPUT.exec(name)?.[1];
}

/** The placeholder names used in one argv element, in order ("number", "params.energy", ...). */
export function placeholdersIn(element: string): string[] {
  return [...element.matchAll(PLACEHOLDER)].map((match) => match[1]);
}

/** Zero-padded to six digits, more when the number is larger: 42 → "000042", 1234567 → "1234567". */
export function outputDirName(number: number): string {
  if (!Number.isSafeInteger(number) || number < 0) {
    throw new Error(`run number must be a non-negative integer, got ${String(number)}`);
  }
  return String(number).padStart(6, '0');
}

function paramText(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
}

function lookupParam(params: Record<string, unknown>, key: string): { found: boolean; value?: unknown } {
  // An exact key wins ("a.b" as one key); otherwise walk nested objects. Own properties only, so
  // {params.constructor} cannot reach Object.prototype.
  if (Object.hasOwn(params, key)) return { found: true, value: params[key] };
  let current: unknown = params;
  for (const part of key.split('.')) {
    if (current === null || typeof current !== 'object' || !Object.hasOwn(current, part)) return { found: false };
    current = (current as Record<string, unknown>)[part];
  }
  return { found: true, value: current };
}

function placeholderValue(name: string, values: PlaceholderValues): string {
  if (name.startsWith('params.')) {
    const key = name.slice('params.'.length);
    const { found, value } = lookupParam(values.params, key);
    if (!found) throw new Error(`placeholder {${name}}: the run has no param "${key}"`);
    return paramText(value);
  }
  switch (name) {
    case 'number':
      return String(values.number);
    case 'number06':
      return outputDirName(values.number);
    case 'name':
      return values.name ?? '';
    case 'input':
      return values.input ?? '';
    case 'output':
      return values.output;
    case 'attempt':
      return String(values.attempt);
    case 'host':
      return values.host;
    case 'targets':
      return values.targets.join(',');
    case 'stage':
      return values.stage ?? FIRST_WAVE_STAGE;
  }
  if (name.startsWith('upstream.')) {
    const stage = upstreamStageOf(name);
    if (stage === undefined) throw new Error(`placeholder {${name}}: the only upstream value is {upstream.STAGE.output}`);
    const upstream = values.upstream ?? {};
    if (!Object.hasOwn(upstream, stage)) {
      throw new Error(`placeholder {${name}}: the run has no output of stage "${stage}" registered`);
    }
    return upstream[stage].output;
  }
  if (Object.hasOwn(values.resources, name)) return String(values.resources[name]);
  const known = [...BUILTIN_PLACEHOLDERS, ...Object.keys(values.resources), 'params.KEY', 'upstream.STAGE.output'].map((n) => `{${n}}`);
  throw new Error(`unknown placeholder {${name}}; known placeholders: ${known.join(' ')}`);
}

/**
 * Substitutes placeholders in each argv element independently. Whatever a value contains (spaces, `;`,
 * `$(...)`), it ends up inside the one element it was written in. Throws on an unknown placeholder, a missing
 * param, or a NUL byte (which no argv can carry); the message names the placeholder and the element.
 */
export function substituteArgv(argv: readonly string[], values: PlaceholderValues): string[] {
  return argv.map((element, index) =>
    element.replace(PLACEHOLDER, (_whole, name: string) => {
      let text: string;
      try {
        text = placeholderValue(name, values);
      } catch (error) {
        throw new Error(`command element ${index} (${JSON.stringify(element)}): ${(error as Error).message}`);
      }
      if (text.includes('\0')) {
        throw new Error(`command element ${index} (${JSON.stringify(element)}): placeholder {${name}} holds a NUL byte`);
      }
      return text;
    }),
  );
}

/**
 * The RUNWARDEN_* variables the command receives. Optional values are empty strings; RUNWARDEN_PARAMS is the
 * run's params as JSON; each resource appears upper-cased (cores → RUNWARDEN_CORES); RUNWARDEN_STAGE names the
 * task's stage and RUNWARDEN_UPSTREAM_<STAGE> (upper-cased) holds each upstream stage's output.
 */
export function commandEnvironment(values: PlaceholderValues, errorFile: string): Record<string, string> {
  const env: Record<string, string> = {
    RUNWARDEN_RUN_NUMBER: String(values.number),
    RUNWARDEN_NAME: values.name ?? '',
    RUNWARDEN_INPUT: values.input ?? '',
    RUNWARDEN_OUTPUT: values.output,
    RUNWARDEN_ATTEMPT: String(values.attempt),
    RUNWARDEN_HOST: values.host,
    RUNWARDEN_TARGETS: values.targets.join(','),
    RUNWARDEN_ERROR_FILE: errorFile,
    RUNWARDEN_PARAMS: JSON.stringify(values.params),
    RUNWARDEN_STAGE: values.stage ?? FIRST_WAVE_STAGE,
  };
  for (const [stage, { output }] of Object.entries(values.upstream ?? {})) {
    env[`RUNWARDEN_UPSTREAM_${stage.toUpperCase()}`] = output;
  }
  for (const [resource, value] of Object.entries(values.resources)) {
    env[`RUNWARDEN_${resource.toUpperCase()}`] = String(value);
  }
  return env;
}
