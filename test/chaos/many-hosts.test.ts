import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import type { RunStore } from '../../src/store/run-store.js';
import type { RunDoc, RunEvent } from '../../src/store/types.js';
import { waitFor, writeConfig } from '../helpers/cli.js';
import { groupAlive } from '../../src/process/kill-group.js';
import { killWithGuard, thaw } from '../helpers/lease-guard.js';
import { useSandbox } from '../helpers/sandbox.js';
import {
  aliveAttempts,
  attemptProcesses,
  between,
  commandEvidenceProblems,
  chaosSeed,
  commandYaml,
  describeOrphans,
  journalOverlaps,
  mulberry32,
  prepareEvidence,
  replayHint,
  reportingEvidence,
  runHistoryProblems,
  violations,
  writePlan,
  type AttemptProcess,
  type CommandTally,
  type Evidence,
} from './evidence.js';
import { reapAttempts } from './reap.js';

// Issue 5.3: three daemons with different host names on one SQLite file share 336 runs (300 short ones, and
// before each kill and the freeze a batch of 12 slow ones). One is SIGKILLed midway and left down: the others fail its busy
// runs after max_busy_time and process them. Later another is SIGKILLed and restarted at once: its restart
// kills its orphaned commands. Each run is done exactly once and no two attempts of a run ever ran at once
// (the command's O_EXCL lock and its journal prove it).
//
// Why two kills and not one: an orphan still running when the others take its run over overlaps the new
// attempt (cleanup cannot kill a command on another host, and the restarted host no longer owns the run, so
// it does not kill it either). The takeover is safe only for orphans that end within max_busy_time. So the
// slow commands end on a gate, a file the test creates, not after a number of steps: b's batch is let go right
// after b's kill and the test waits for its orphans to end (long before max_busy_time, however slow the
// machine); c's batch is held until c's restart has killed its orphans. CPU speed changes neither.
// Both kills take the host's lease guard with it (else the guard kills the commands at once): the takeover and
// the restart's recovery are the backstops under test here.
//
// Issue 12 fault 7: then a host picked at random is frozen (SIGSTOP) past max_busy_time while it holds slow
// runs of a third batch, whose gate stays shut until it is thawed, and another host is frozen briefly. The
// frozen host's lease guard must kill its commands before the others take its runs over (a command left
// running would meet the new attempt at the lock); thawed, the frozen host writes nothing for the runs it lost.

const FILE = 'test/chaos/many-hosts.test.ts';
const HOSTS = ['a', 'b', 'c'] as const;
const SHORT_RUNS = 300;
// Before each kill a batch of slow runs at a higher priority: more than the other two hosts have slots, so the
// host to be killed surely takes some of them while its short runs end.
const SLOW_BATCH = 12;
const RUNS = SHORT_RUNS + 3 * SLOW_BATCH;
const STEP_SECONDS = 0.05;
const SLOW_STEPS: [number, number] = [2, 6]; // then each slow command works on until its batch's gate opens
const MAX_BUSY_MS = 10_000;
const GUARD_TTL_MS = 8_000; // max_busy_time − 2 × signal_escalate − check_interval

const sandbox = useSandbox('runwarden-hosts-');

function config(evidence: Evidence): void {
  writeConfig(
    sandbox.dir,
    `store: sqlite:./runs.db
process:
  command: ${commandYaml(evidence, STEP_SECONDS)}
  output_root: ./out
  log_dir: ./logs
timeouts:
  check_interval: 1s
  cleanup_interval: 1s
  max_busy_time: 10s
  max_considering_time: 10s
  presumed_dead: 10s
  idle_poll: 1s
  signal_escalate: 0.5s
retry: {base: 0.1s, factor: 2, max_exponent: 1, jitter: [0.5, 1.5], max_failures: 10}
`,
  );
}

async function finishedCount(s: RunStore): Promise<number> {
  const counts = await s.countRunsByState();
  return counts.done + counts.abandoned;
}

async function held(s: RunStore, host: string): Promise<RunDoc[]> {
  return [...(await s.listRuns({ host, state: 'considering' })), ...(await s.listRuns({ host, state: 'busy' }))];
}

function ofHost(processes: AttemptProcess[], host: string): AttemptProcess[] {
  return processes.filter((p) => p.record.split('-')[1] === host);
}

it(
  'three hosts on one store: 336 runs done once each; a killed host is taken over, a restarted one kills its orphans, a frozen one is not overlapped',
  async () => {
    const seed = chaosSeed();
    const hint = replayHint(seed, FILE);
    console.log(`many-hosts seed ${seed}: ${hint}`);
    const random = mulberry32(seed);
    const began = Date.now();
    const evidence = prepareEvidence(sandbox.dir);
    config(evidence);

    const isSlow = (number: number) => number > SHORT_RUNS;
    // Batch 2's gate is per host (attempt-command.sh): the frozen host's commands are held, the others' are not.
    const gates = [join(sandbox.dir, 'gate-0'), join(sandbox.dir, 'gate-1'), join(sandbox.dir, 'gate-2-@HOST@')];
    const victim = HOSTS[between(random, 0, HOSTS.length - 1)]!;
    const brief = HOSTS.filter((h) => h !== victim)[between(random, 0, 1)]!;
    const gateOf = (number: number) => (isSlow(number) ? { gate: gates[Math.floor((number - SHORT_RUNS - 1) / SLOW_BATCH)]! } : {});
    for (let number = 1; number <= RUNS; number++) {
      const steps = () => (isSlow(number) ? between(random, ...SLOW_STEPS) : between(random, 1, 6));
      const failsOnce = random() < 0.05;
      writePlan(evidence, number, [
        { steps: steps(), exitCode: failsOnce ? 3 : 0, ...gateOf(number) },
        { steps: steps(), exitCode: 0, ...gateOf(number) },
      ]);
    }
    const openGate = (batch: number, host = '') => writeFileSync(gates[batch]!.replace('@HOST@', host), '');
    const s = await sandbox.openStore();
    const now = Date.now();
    const newRun = (number: number) => ({
      number,
      start: now - 1_000_000 + number * 1000,
      ...(isSlow(number) ? { priority: 5 } : {}),
    });
    await s.insertRuns(Array.from({ length: SHORT_RUNS }, (_, i) => newRun(i + 1)));
    const submitSlowBatch = (batch: number) =>
      s.insertRuns(Array.from({ length: SLOW_BATCH }, (_, i) => newRun(SHORT_RUNS + batch * SLOW_BATCH + i + 1)));

    const slots = Object.fromEntries(HOSTS.map((h) => [h, between(random, 2, 4)])) as Record<string, number>;
    const daemons = new Map<string, ReturnType<typeof sandbox.start>>();
    const start = (host: string) => {
      daemons.set(host, sandbox.start(['daemon', '--host', host, '--slots', String(slots[host])]));
      return daemons.get(host)!.pid!;
    };
    const recovered = (host: string, pid: number) =>
      waitFor(
        async () => {
          const doc = await s.getHost(host);
          return doc?.pid === pid && doc.state !== 'starting';
        },
        `host ${host} (pid ${pid}) to register and recover (${hint})`,
        { timeoutMs: 30_000 },
      );
    /** Waits until `host` holds a slow run (of `batch`, if given) whose command is on record (it runs until its gate opens). */
    const slowRunOf = (host: string, batch?: number) =>
      waitFor(
        async () => {
          const slow = (await s.listRuns({ host, state: 'busy' })).filter(
            (r) =>
              isSlow(r.number) &&
              r.processing!.pgid !== undefined &&
              (batch === undefined || Math.floor((r.number - SHORT_RUNS - 1) / SLOW_BATCH) === batch),
          );
          return slow.length > 0 ? slow : null;
        },
        `host ${host} to hold a slow run (${hint})`,
        { timeoutMs: 60_000, intervalMs: 20 },
      );
    const kill = async (host: string) => {
      await killWithGuard(daemons.get(host)!);
      daemons.delete(host);
    };
    /** SIGSTOP for `ms` (the stimulus, not a wait for anything), then SIGCONT. */
    const freeze = async (host: string, ms: number) => {
      const pid = daemons.get(host)!.pid!;
      process.kill(pid, 'SIGSTOP');
      await new Promise((r) => setTimeout(r, ms));
      thaw(pid);
    };

    try {
      await reportingEvidence(evidence, hint, async () => {
        for (const host of HOSTS) await recovered(host, start(host));

        // Kill b and leave it down: a and c take its runs over once max_busy_time passed.
        await waitFor(async () => (await finishedCount(s)) >= 80, `80 runs finished (${hint})`, { timeoutMs: 60_000 });
        await submitSlowBatch(0);
        await slowRunOf('b');
        await kill('b');
        const takenOver = await held(s, 'b');
        const orphansOfB = ofHost(aliveAttempts(attemptProcesses(evidence)), 'b');
        expect(takenOver.length, hint).toBeGreaterThan(0);
        expect(orphansOfB.length, `b's commands survive its SIGKILL; ${hint}`).toBeGreaterThan(0);
        // Let b's batch end: its orphans must be gone before max_busy_time lets a and c take b's runs over.
        openGate(0);
        await waitFor(() => aliveAttempts(orphansOfB).length === 0, `b's orphans to end at their gate (${hint})`, {
          timeoutMs: 30_000,
        });
        for (const run of takenOver) {
          await waitFor(
            async () => {
              const p = (await s.getRun(run.number))!.processing!;
              return p.state === 'done' && p.host !== 'b';
            },
            `run ${run.number} of b to be done by another host (${hint})`,
            { timeoutMs: 60_000 },
          );
          const repair = (await s.listRunEvents(run.number)).find(
            (e) => e.attempt === run.processing!.attempt && e.to === 'failed',
          );
          expect(repair?.host, `run ${run.number}: failed by cleanup on another host; ${hint}`).toMatch(/^[ac]$/);
          expect(repair?.reason).toMatch(/^host b said it was (busy|considering) at .*timeouts\.max_(busy|considering)_time passed/);
        }
        expect((await s.getHost('b'))?.state, `b presumed dead; ${hint}`).toBe('dead');

        // b comes back; later c is killed and restarted at once: its restart kills its orphaned commands.
        await recovered('b', start('b'));
        await submitSlowBatch(1);
        const cHeld = await slowRunOf('c');
        await kill('c');
        const orphansOfC = ofHost(aliveAttempts(attemptProcesses(evidence)), 'c');
        expect(orphansOfC.length, `c's commands survive its SIGKILL; ${hint}`).toBeGreaterThan(0);
        await recovered('c', start('c'));
        expect(await describeOrphans(s, aliveAttempts(orphansOfC)), `c's orphans after its restart; ${hint}`).toEqual([]);
        const killedAtRestart: number[] = [];
        for (const run of cHeld) {
          const failed = (await s.listRunEvents(run.number)).find(
            (e) => e.attempt === run.processing!.attempt && e.to === 'failed',
          );
          expect(failed?.detail, `run ${run.number}: failed by c's restart; ${hint}`).toMatchObject({ kind: 'restart' });
          if (failed?.detail?.killed_pgid === run.processing!.pgid) killedAtRestart.push(run.number);
        }
        expect(killedAtRestart.length, `c's restart killed a slow run's orphan; ${hint}`).toBeGreaterThan(0);
        openGate(1);

        // A host frozen past max_busy_time while it runs slow commands; another frozen briefly meanwhile.
        for (const host of HOSTS) if (host !== victim) openGate(2, host);
        await submitSlowBatch(2);
        const frozenHeld = await slowRunOf(victim, 2);
        const victimPid = daemons.get(victim)!.pid!;
        const frozenAt = Date.now();
        process.kill(victimPid, 'SIGSTOP');
        let frozenMs = 0;
        let briefMs = 0;
        try {
          briefMs = between(random, 300, 3000);
          await new Promise((r) => setTimeout(r, between(random, 0, MAX_BUSY_MS - briefMs)));
          await freeze(brief, briefMs);
          // Frozen until another host has taken one of its slow runs over and run the next attempt's command (past
          // max_busy_time): a command of the frozen host still running, held at its gate, would meet it at the lock.
          await waitFor(
            async () => {
              for (const r of frozenHeld) {
                const p = (await s.getRun(r.number))!.processing!;
                if (p.host !== victim && p.attempt > r.processing!.attempt && (p.state === 'done' || p.pgid !== undefined)) return true;
              }
              return false;
            },
            `another host to take a slow run of frozen ${victim} over (${hint})`,
            { timeoutMs: 40_000 },
          );
          await new Promise((r) => setTimeout(r, between(random, 0, 2000)));
        } finally {
          thaw(victimPid);
          frozenMs = Date.now() - frozenAt;
        }
        const frozenGroupsAlive = frozenHeld.filter((r) => groupAlive(r.processing!.pgid!)).map((r) => r.number);
        expect(frozenGroupsAlive, `${victim}'s commands outlived its lease while it was frozen; ${hint}`).toEqual([]);
        openGate(2, victim);

        await waitFor(async () => (await finishedCount(s)) === RUNS, `all ${RUNS} runs finished (${hint})`, {
          timeoutMs: 60_000,
        });
        for (const host of HOSTS) {
          const daemon = daemons.get(host)!;
          daemon.kill('SIGTERM');
          const stopped = await daemon;
          expect(stopped.exitCode, `${host} stops cleanly (${stopped.signal ?? ''}: ${String(stopped.all).split('\n').slice(-8).join('\n')}); ${hint}`).toBe(0);
          daemons.delete(host);
        }

        const problems: string[] = [];
        const histories = new Map<number, RunEvent[]>();
        const donePerHost: Record<string, number> = { a: 0, b: 0, c: 0 };
        let attempts = 0;
        let repairedByCleanup = 0;
        for (let number = 1; number <= RUNS; number++) {
          const run = (await s.getRun(number))!;
          const p = run.processing!;
          if (p.state !== 'done') problems.push(`run ${number} is ${p.state}: ${p.reason ?? ''}`);
          else donePerHost[p.host] = (donePerHost[p.host] ?? 0) + 1;
          const result = join(sandbox.dir, 'out', String(number).padStart(6, '0'), 'result.txt');
          const written = existsSync(result) ? readFileSync(result, 'utf8').trim() : '(none)';
          if (written !== `${number} ${p.attempt} ${p.host}`) {
            problems.push(`run ${number}: done by ${p.host} attempt ${p.attempt} but its output says ${written}`);
          }
          const events = await s.listRunEvents(number);
          problems.push(...runHistoryProblems(run, events));
          histories.set(number, events);
          attempts += p.attempt;
          repairedByCleanup += events.filter((e) => e.detail?.by === 'cleanup').length;
        }
        expect(problems, hint).toEqual([]);
        // The evidence below is only worth something if the commands wrote it: one journal per run, one command
        // per busy transition.
        const tally: CommandTally = { busyTransitions: 0, commandsStarted: 0, busyWithoutCommand: 0 };
        expect(commandEvidenceProblems(evidence, histories, tally), `command evidence; ${hint}`).toEqual([]);
        expect(aliveAttempts(attemptProcesses(evidence)).map((p) => p.record), `alive attempts; ${hint}`).toEqual([]);
        expect(violations(evidence), `lock violations; ${hint}`).toEqual([]);
        expect(journalOverlaps(evidence), `journal overlaps; ${hint}`).toEqual([]);

        const figures = {
          seed,
          runs: RUNS,
          hosts: HOSTS.length,
          slots,
          kills: 2,
          restarts: 2,
          done_per_host: donePerHost,
          attempts,
          commands_started: tally.commandsStarted,
          busy_transitions: tally.busyTransitions,
          busy_without_command: tally.busyWithoutCommand,
          runs_of_b_taken_over: takenOver.length,
          orphans_of_b_after_kill: orphansOfB.length,
          repaired_by_cleanup: repairedByCleanup,
          orphans_of_c_killed_at_restart: killedAtRestart.length,
          frozen_host: victim,
          frozen_ms: frozenMs,
          briefly_frozen_host: brief,
          briefly_frozen_ms: briefMs,
          slow_runs_of_frozen_host: frozenHeld.length,
          slow_runs_of_frozen_host_taken_over: frozenHeld.filter((r) => {
            const p = histories.get(r.number)!.find((e) => e.attempt === r.processing!.attempt && e.to === 'failed');
            return p !== undefined && p.host !== victim;
          }).length,
          commands_killed_by_guard: [...histories.values()].flat().filter((e) => e.detail?.interruption === 'lease_guard').length,
          lost: RUNS - (await finishedCount(s)),
          doubled: journalOverlaps(evidence).length + violations(evidence).length,
          duration_s: Math.round((Date.now() - began) / 100) / 10,
        };
        console.log(`many-hosts figures: ${JSON.stringify(figures)}`);
      });
    } finally {
      for (const daemon of daemons.values()) thaw(daemon.pid);
      for (const daemon of daemons.values()) daemon.kill('SIGKILL');
      await Promise.all(daemons.values());
      reapAttempts(evidence);
    }
  },
  150_000,
);
