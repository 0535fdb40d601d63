// A daemon that starts where its predecessor ended without stopping (killed, crashed, power lost) says so in the
// operator log, with when the predecessor was last heard of. `status --history` reads these entries back: a crash
// and restart within one minute leaves no gap in the per-minute monitor samples, but it leaves this line.
// One home for the line's wording and its reading, so the two cannot drift apart.

export interface UncleanRestart {
  host: string;
  /** The predecessor's pid and the state its host document was left in. */
  previousPid: number;
  previousState: string;
  /** The predecessor's last heartbeat, epoch ms. */
  lastHeard: number;
}

/** `host daq1 restarted: its previous daemon (pid 4242, busy) ended without stopping; last heard of at <ISO>` */
export function uncleanRestartMessage(restart: UncleanRestart): string {
  return (
    `host ${restart.host} restarted: its previous daemon (pid ${restart.previousPid}, ${restart.previousState}) ` +
    `ended without stopping; last heard of at ${new Date(restart.lastHeard).toISOString()}`
  );
}

const MESSAGE = /^host (\S+) restarted: its previous daemon \(pid (\d+), ([a-z_]+)\) ended without stopping; last heard of at (\S+)$/;

/** The restart an operator log line records, or null for any other line. */
export function parseUncleanRestart(message: string): UncleanRestart | null {
  const match = MESSAGE.exec(message);
  if (!match) return null;
  const lastHeard = Date.parse(match[4]!);
  if (!Number.isFinite(lastHeard)) return null;
  return { host: match[1]!, previousPid: Number(match[2]), previousState: match[3]!, lastHeard };
}
