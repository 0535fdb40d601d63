import { describe, expect, it } from 'vitest';
import { displacePreviousDaemon, type ProcessControl } from '../../src/daemon/displace.js';
import type { HostDoc } from '../../src/store/types.js';

// The escalation of displacement, with a process table the test controls: the real-process cases (a daemon
// that stops on SIGTERM, one that needs SIGKILL, a recycled pid) are in test/integration/recovery.test.ts. A
// process that survives SIGKILL cannot be made on purpose, so the fatal branch is checked here.

function previous(extra: Partial<HostDoc> = {}): HostDoc {
  return {
    host: 'daq01',
    pid: 4242,
    proc_start: 777,
    token: 't',
    state: 'busy',
    time: 0,
    started: 0,
    version: 'old',
    slots: 1,
    running: [],
    ...extra,
  };
}

/** A process that dies on the signals listed in `diesOn`, and records what it was sent. */
function fakeProcess(diesOn: NodeJS.Signals[], startedAt = 777) {
  let alive = true;
  const sent: NodeJS.Signals[] = [];
  const control: ProcessControl = {
    isSameProcess: (pid, procStart) => alive && pid === 4242 && (procStart === undefined || procStart === startedAt),
    signal: (_pid, signal) => {
      sent.push(signal);
      if (diesOn.includes(signal)) alive = false;
    },
  };
  return { control, sent };
}

const quiet = { warn: () => undefined };

describe('displacePreviousDaemon', () => {
  it('stops at SIGTERM when the previous daemon exits', async () => {
    const p = fakeProcess(['SIGTERM']);
    expect(await displacePreviousDaemon(previous(), 50, quiet, p.control)).toBe('terminated');
    expect(p.sent).toEqual(['SIGTERM']);
  });

  it('escalates to SIGKILL after signal_escalate', async () => {
    const p = fakeProcess(['SIGKILL']);
    expect(await displacePreviousDaemon(previous(), 50, quiet, p.control)).toBe('killed');
    expect(p.sent).toEqual(['SIGTERM', 'SIGKILL']);
  });

  it('fails loudly when the previous daemon survives SIGKILL', async () => {
    const p = fakeProcess([]);
    await expect(displacePreviousDaemon(previous(), 30, quiet, p.control)).rejects.toThrow(
      'could not displace the previous daemon of host daq01: pid 4242 is still alive after SIGKILL',
    );
    expect(p.sent).toEqual(['SIGTERM', 'SIGKILL']);
  });

  it('never signals a pid whose start time differs (recycled) or that it cannot prove', async () => {
    const recycled = fakeProcess(['SIGTERM'], 999);
    expect(await displacePreviousDaemon(previous(), 30, quiet, recycled.control)).toBe('none');
    expect(recycled.sent).toEqual([]);
    const unproven = fakeProcess(['SIGTERM']);
    const warnings: string[] = [];
    const outcome = await displacePreviousDaemon(previous({ proc_start: undefined }), 30, {
      warn: (m: string) => warnings.push(m),
    }, unproven.control);
    expect(outcome).toBe('unverifiable');
    expect(unproven.sent).toEqual([]);
    expect(warnings[0]).toContain('cannot be proven');
  });
});
