import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { cleanEnv, isAlive, waitFor, writeConfig } from '../helpers/cli.js';
import { useSandbox } from '../helpers/sandbox.js';

// Issue 12 fault 2: a daemon whose host actor crashed must not live on. The crash here is the one of fault 1
// (a run actor's system id already taken), planted by the fixture so it does not depend on that fault: the
// host actor errors inside its own transition, and XState leaves its children (heartbeat, watchers, the
// other run's lease keeper) running. Before: the process lived on, logging "host heartbeat failed: The
// database connection is not open" every second, with its run stuck.

const sandbox = useSandbox('runwarden-fatal-exit-');
const fixture = fileURLToPath(new URL('./fixtures/crashing-host.ts', import.meta.url));
const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm')).href;

describe('a host actor that crashes in its own transition', () => {
  it('ends the process with exit 1 within a bound, its commands killed; the next start recovers the runs', async () => {
    const work = sandbox.script(
      'work.sh',
      `echo $$ > "${sandbox.dir}/pid-$1"\nwhile [ -e "${sandbox.dir}/hold" ]; do sleep 0.05; done\necho ok > "$2/result"`,
    );
    writeConfig(
      sandbox.dir,
      `store: sqlite:./runs.db
host: testhost
slots: 2
process:
  command: ["sh", ${JSON.stringify(work)}, "{number}", "{output}"]
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 0.3s
  idle_poll: 1h
  signal_escalate: 1s
  max_busy_time: 1h
  max_considering_time: 1h
  presumed_dead: 1h
retry: {base: 0, factor: 2, max_exponent: 3, jitter: [1, 1], max_failures: 3}
`,
    );
    writeFileSync(join(sandbox.dir, 'hold'), '');
    expect((await sandbox.run(['submit', '2'])).exitCode).toBe(0);
    const daemon = sandbox.track(
      execa(process.execPath, ['--import', tsxLoader, fixture, sandbox.dir], {
        cwd: sandbox.dir,
        env: cleanEnv(),
        extendEnv: false,
        reject: false,
        stdin: 'ignore',
        all: true,
      }),
    );
    const pidFile = join(sandbox.dir, 'pid-2');
    await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim(), 'run 2 to be busy');
    const command = Number(readFileSync(pidFile, 'utf8').trim());
    // The claim of run 1 crashes the host actor.
    expect((await sandbox.run(['submit', '1'])).exitCode).toBe(0);
    let result: Awaited<typeof daemon> | undefined;
    void daemon.then((r) => {
      result = r;
    });
    await waitFor(() => result, 'the crashed daemon to exit', { timeoutMs: 30_000, intervalMs: 100 });
    expect(result!.exitCode, String(result!.all)).toBe(1);
    expect(String(result!.all)).toMatch(/"level":"fatal","message":"host actor crashed: .*run-1/);
    expect(isAlive(command)).toBe(false);

    // Restarted, as systemd or --undying would: both runs held by the dead daemon are repaired and done.
    rmSync(join(sandbox.dir, 'hold'));
    const again = await sandbox.run(['daemon', '--once'], { env: {} });
    expect(again.exitCode, again.stderr).toBe(0);
    const s = await sandbox.openStore();
    for (const number of [1, 2]) expect((await s.getRun(number))!.processing?.state).toBe('done');
  });
});
