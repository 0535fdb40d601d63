import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { CommandHandle } from '../process/spawn-command.js';
import type { RunStore } from '../store/run-store.js';
import type { DiskFigures } from '../store/types.js';

/** What every effect of one daemon shares. */
export interface DaemonContext {
  config: Config;
  store: RunStore;
  logger: Logger;
  host: string;
  /** The host document's token, set at registration. */
  hostToken: string;
  clock: () => number;
  random: () => number;
  /** Measures the output disk for the disk gate (statfs); tests may substitute a probe. */
  diskProbe: (path: string) => DiskFigures;
  /** Commands alive right now, so a second signal or a crash can kill their groups at once. */
  liveCommands: Set<CommandHandle>;
}
