// The machines documented in docs/machines.md, shared by the generator (src/diagram/write-docs.ts)
// and the test that keeps the committed file fresh (test/diagram/machines-doc.test.ts).

import type { AnyStateMachine } from 'xstate';
import { hostMachine } from '../../machines/host.machine.js';
import { runMachine } from '../../machines/run.machine.js';
import { supervisorMachine } from '../../machines/supervisor.machine.js';

export interface CatalogEntry {
  /** Short name, used for anchors. */
  name: string;
  /** Section title. */
  title: string;
  /** One paragraph of Markdown shown above the diagram. */
  description: string;
  machine: AnyStateMachine;
}

export function machineCatalog(): CatalogEntry[] {
  return [
    {
      name: 'run',
      title: 'Run',
      description:
        'One actor per claimed attempt of one task (one stage of a run; system id `run-<number>/<stage>`), ' +
        'spawned by the host. The claim itself happened in the ' +
        'store before the actor exists, so it starts in `considering`: preflight checks (run number, ' +
        'input, params, upstream outputs, disk gate, removal of this host\'s partial outputs) lead to `busy`, ' +
        'where the supervisor runs the stage\'s command; exit 0 leads to `busy.registering`, or, when the ' +
        'stage has a `check`, first to `busy.verifying` (the output is there) and `busy.checking` (the check ' +
        'command, supervised like the command: group, timeouts, kill); the output registered ends in `done`, ' +
        'any other end (exit ≠ 0, timed out, stalled, output missing, check failed, failed preflight) in ' +
        '`failed`, which ' +
        'either records the failure (`failed.waitingForRetry`: the actor\'s part is over and the host lets it ' +
        'go; once `next_retry` has passed the task is claimed again by a new claim and a new actor) or, after ' +
        '`max_failures` or on a `no_retry_exit_codes` exit, gives the task up (`abandoned`). An attempt that could not start for a reason of ' +
        'the host (its check finds the executable missing or a directory unwritable) is an interruption: ' +
        'not counted in `n_failures`, abandoned only at `max_interruptions`. Every write is fenced by the lease token: when ' +
        'an operator\'s fail or abandon, or cleanup, takes the lease away the actor kills the command and stops ' +
        'without writing (`lost`, never `abandoned`: in `busy.supervising` and `busy.checking` `LEASE_LOST` ' +
        'and `STOP` only terminate the command, which is not drawn, and the supervisor\'s end then leads on); a stopping host releases the run as `failed` with `next_retry = now` (`released`).',
      machine: runMachine,
    },
    {
      name: 'supervisor',
      title: 'Supervisor',
      description:
        'Invoked inside the run\'s `busy` state; supervises one attempt\'s command, which runs in its own ' +
        'process group: `spawning → running → exited`. `max_processing_time` (timed out) or ' +
        '`max_no_output_time` without a byte of output (stalled), like a stop request, lead to ' +
        '`terminating` (SIGTERM to the group); after `signal_escalate` comes `killing` (SIGKILL), and ' +
        'after another `signal_escalate` `unkillable`, which crashes the daemon. Leaving `busy` for any ' +
        'reason stops this actor and so kills the group.',
      machine: supervisorMachine,
    },
    {
      name: 'host',
      title: 'Host',
      description:
        'One per daemon. `starting` registers the host, displacing a previous daemon of the same host ' +
        '(verified by pid and process start time); `recovering` kills the orphaned process groups of the ' +
        'tasks its predecessor held and fails those tasks at once; `running` claims tasks while the daemon ' +
        'has a free slot and some stage has room in its own `slots` (a claim names those stages, and the ' +
        'tasks still running here, which it excludes), and while the disk gate is open (a shut gate leaves ' +
        'the host idle and reported as `disk_full`), ' +
        'spawning one run actor per claimed task, sleeps when nothing is eligible and wakes up on new runs or ' +
        'when a retry is due, and runs the cleanup of other hosts\' stale runs every `cleanup_interval`. ' +
        'When `process.host_fault_threshold` runs in a row could not start for a reason of the host (the ' +
        'executable missing, the output or log directory not writable), `paused` claims nothing, announces ' +
        'why in the operator log and the host document (state `paused`), and checks the host again every ' +
        '`min(idle_poll, check_interval)` until the check passes; ' +
        '`stopping` (SIGTERM/SIGINT) claims nothing more, terminates the commands ' +
        'with escalation and releases their runs before the host deregisters and exits 0. A fatal ' +
        'settlement of a run (unkillable command, unexpected error) ends in `failed`: the daemon logs ' +
        'it at fatal and exits non-zero (crash-only).',
      machine: hostMachine,
    },
  ];
}
