import { describe, expect, it } from 'vitest';
import { groupAlive } from '../../src/process/kill-group.js';
import { attemptCommand, journalOverlaps, prepareEvidence, violations, writePlan, type Evidence } from '../chaos/evidence.js';
import { reapAttempts } from '../chaos/reap.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { leaseGuardOf, thaw } from '../helpers/lease-guard.js';
import { useSandbox } from '../helpers/sandbox.js';

// Issue 12 faults 7 and 14: the lease binds the command, not only the daemon's writes. A daemon frozen by
// SIGSTOP (a VM pause, a stuck NFS call) past max_busy_time, or a foreground `process N` killed with SIGKILL,
// must not leave its command running beside the next attempt: the lease guard kills it.

const sandbox = useSandbox('runwarden-guard-');
const STEP = 0.05;

function config(evidence: Evidence, ignoresTerm: boolean): void {
  const args = ['{number}', '{output}', '{attempt}', '{host}', evidence.root, evidence.plans, String(STEP)];
  // `trap '' TERM` is inherited through exec and by the command's children: only SIGKILL ends it.
  const command = ignoresTerm
    ? ['sh', '-c', 'trap "" TERM; exec sh "$0" "$@"', attemptCommand, ...args]
    : ['sh', attemptCommand, ...args];
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
process:
  command: ${JSON.stringify(command)}
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 0.5s
  cleanup_interval: 0.5s
  idle_poll: 0.5s
  signal_escalate: 0.5s
  max_busy_time: 4s
  max_considering_time: 4s
  presumed_dead: 1h
retry: {base: 0.1s, factor: 2, max_exponent: 1, jitter: [1, 1], max_failures: 5}
`,
  );
}

describe('a frozen owner (SIGSTOP past max_busy_time) never overlaps the takeover (issue 12 fault 7)', () => {
  for (const ignoresTerm of [false, true]) {
    it(`with a command that ${ignoresTerm ? 'ignores' : 'honours'} SIGTERM: the guard kills it before another host takes the run; thawed, the owner writes nothing`, async () => {
      const evidence = prepareEvidence(sandbox.dir);
      config(evidence, ignoresTerm);
      // Attempt 1 would run 20 s, far past the takeover; attempt 2 ends in a quarter second.
      writePlan(evidence, 1, [
        { steps: 400, exitCode: 0 },
        { steps: 5, exitCode: 0 },
      ]);
      const s = await sandbox.openStore();
      await s.insertRuns([{ number: 1, start: Date.now() }]);
      const first = sandbox.start(['daemon', '--host', 'h1']);
      let frozen: number | undefined;
      try {
        const busy = await waitFor(async () => {
          const p = (await s.getRun(1))?.processing;
          return p?.state === 'busy' && p.host === 'h1' && p.pgid !== undefined ? p : undefined;
        }, 'h1 to run attempt 1');
        expect(leaseGuardOf(first.pid!), 'h1 runs a lease guard').toBeDefined();
        frozen = first.pid!;
        process.kill(frozen, 'SIGSTOP');

        const second = sandbox.start(['daemon', '--host', 'h2']);
        const done = await waitFor(
          async () => {
            const run = await s.getRun(1);
            return run?.processing?.state === 'done' ? run : undefined;
          },
          'h2 to take run 1 over and finish it',
          { timeoutMs: 30_000 },
        );
        expect(done.processing).toMatchObject({ host: 'h2', attempt: 2 });
        // The commands' own evidence: an O_EXCL lock held by a live process, and the journal on one clock.
        expect(violations(evidence), 'lock violations').toEqual([]);
        expect(journalOverlaps(evidence), 'journal overlaps').toEqual([]);
        expect(groupAlive(busy.pgid!), "h1's command group is gone while h1 is still frozen").toBe(false);

        // Thawed, h1 finds its lease lost and writes nothing more about run 1.
        const before = await s.listRunEvents(1);
        thaw(frozen);
        frozen = undefined;
        await waitFor(async () => {
          const host = await s.getHost('h1');
          return host !== null && host.running.length === 0 && host.time > Date.now() - 1000;
        }, 'h1, thawed, to heartbeat with no run');
        expect(await s.listRunEvents(1)).toEqual(before);
        expect((await s.getRun(1))?.processing).toMatchObject({ state: 'done', host: 'h2', attempt: 2 });
        for (const daemon of [first, second]) {
          daemon.kill('SIGTERM');
          expect((await daemon).exitCode).toBe(0);
        }
        expect(violations(evidence)).toEqual([]);
      } finally {
        thaw(frozen);
        reapAttempts(evidence);
      }
    }, 60_000);
  }
});

describe('a daemon frozen past its lease guard TTL, with nobody taking over', () => {
  it('finds its command killed by the guard when thawed and records an interruption, not a failure', async () => {
    const evidence = prepareEvidence(sandbox.dir);
    config(evidence, false);
    writePlan(evidence, 2, [
      { steps: 400, exitCode: 0 },
      { steps: 2, exitCode: 0 },
    ]);
    const s = await sandbox.openStore();
    await s.insertRuns([{ number: 2, start: Date.now() }]);
    const daemon = sandbox.start(['daemon', '--host', 'h1']);
    let frozen: number | undefined;
    try {
      const busy = await waitFor(async () => {
        const p = (await s.getRun(2))?.processing;
        return p?.state === 'busy' && p.pgid !== undefined ? p : undefined;
      }, 'the daemon to run attempt 1');
      frozen = daemon.pid!;
      process.kill(frozen, 'SIGSTOP');
      await waitFor(() => !groupAlive(busy.pgid!), 'the guard to kill the frozen daemon\'s command', { timeoutMs: 10_000 });
      thaw(frozen);
      frozen = undefined;
      const done = await waitFor(async () => {
        const run = await s.getRun(2);
        return run?.processing?.state === 'done' ? run : undefined;
      }, 'run 2 to be retried to done');
      expect(done.processing).toMatchObject({ host: 'h1', attempt: 2, n_failures: 0 });
      const interrupted = (await s.listRunEvents(2)).find((e) => e.to === 'failed');
      expect(interrupted?.reason).toMatch(/the lease guard killed it: its lease was not renewed for 2\.5s/);
      expect(interrupted?.detail).toMatchObject({ interruption: 'lease_guard' });
      expect(journalOverlaps(evidence)).toEqual([]);
    } finally {
      thaw(frozen);
      reapAttempts(evidence);
    }
  }, 30_000);
});

describe('a foreground process N killed with SIGKILL (issue 12 fault 14)', () => {
  it('has its command killed at once by its lease guard, no daemon needed', async () => {
    const evidence = prepareEvidence(sandbox.dir);
    config(evidence, true);
    writePlan(evidence, 7, [{ steps: 400, exitCode: 0 }]);
    const s = await sandbox.openStore();
    await s.insertRuns([{ number: 7, start: Date.now() }]);
    const foreground = sandbox.start(['process', '7']);
    try {
      const busy = await waitFor(async () => {
        const p = (await s.getRun(7))?.processing;
        return p?.state === 'busy' && p.pgid !== undefined ? p : undefined;
      }, 'process 7 to run its command');
      expect(groupAlive(busy.pgid!)).toBe(true);
      foreground.kill('SIGKILL');
      await foreground;
      // TERM at once, KILL after signal_escalate (0.5 s; this command ignores TERM): well within the deadline.
      await waitFor(() => !groupAlive(busy.pgid!), `the command's group ${busy.pgid} to be gone`, { timeoutMs: 5_000 });
      expect(await s.getHost(busy.host)).toBeNull(); // no daemon ever ran
    } finally {
      reapAttempts(evidence);
    }
  }, 30_000);
});

describe('a daemon killed with SIGKILL', () => {
  it('has its commands killed at once by its lease guard, before any restart', async () => {
    const evidence = prepareEvidence(sandbox.dir);
    config(evidence, true);
    writePlan(evidence, 5, [{ steps: 400, exitCode: 0 }]);
    const s = await sandbox.openStore();
    await s.insertRuns([{ number: 5, start: Date.now() }]);
    const daemon = sandbox.start(['daemon', '--host', 'h1']);
    try {
      const busy = await waitFor(async () => {
        const p = (await s.getRun(5))?.processing;
        return p?.state === 'busy' && p.pgid !== undefined ? p : undefined;
      }, 'the daemon to run its command');
      daemon.kill('SIGKILL');
      await daemon;
      await waitFor(() => !groupAlive(busy.pgid!), `the command's group ${busy.pgid} to be gone`, { timeoutMs: 5_000 });
    } finally {
      reapAttempts(evidence);
    }
  }, 30_000);
});

describe('a daemon whose lease guard dies', () => {
  it('stops at once with exit 1 and kills its commands (crash-only: nothing would bind them to their leases)', async () => {
    const evidence = prepareEvidence(sandbox.dir);
    config(evidence, false);
    writePlan(evidence, 3, [{ steps: 400, exitCode: 0 }]);
    const s = await sandbox.openStore();
    await s.insertRuns([{ number: 3, start: Date.now() }]);
    const daemon = sandbox.start(['daemon', '--host', 'h1']);
    try {
      const busy = await waitFor(async () => {
        const p = (await s.getRun(3))?.processing;
        return p?.state === 'busy' && p.pgid !== undefined ? p : undefined;
      }, 'the daemon to run its command');
      const guard = leaseGuardOf(daemon.pid!);
      expect(guard, 'the daemon runs a lease guard').toBeDefined();
      process.kill(guard!, 'SIGKILL');
      const result = await daemon;
      expect(result.exitCode).toBe(1);
      expect(result.all).toMatch(/lease guard \(pid \d+\) ended unexpectedly \(SIGKILL\)/);
      await waitFor(() => !groupAlive(busy.pgid!), `the command's group ${busy.pgid} to be gone`, { timeoutMs: 5_000 });
    } finally {
      reapAttempts(evidence);
    }
  }, 30_000);
});
