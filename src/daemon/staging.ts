import type { Config } from '../config/schema.js';
import { stagesForRun, type StageSpec } from '../policy/pipeline.js';
import type { RunStore } from '../store/run-store.js';
import type { RunDoc } from '../store/types.js';

/**
 * Gives a run nobody has given tasks yet (another tool inserted it, or it was pending in a first-wave store)
 * the tasks of this configuration's stages whose selection it matches. The store's createTasks is idempotent,
 * so a daemon and a foreground `process N` meeting the same run at once agree. One place for both, so the
 * daemon and the operator can never stage a run differently.
 */
export async function stageRun(
  store: RunStore,
  config: Config,
  run: RunDoc,
): Promise<{ specs: StageSpec[]; created: number }> {
  // The store decodes every run with safe defaults (tags a list, params an object), so the run is selectable
  // as it is; a field another tool wrote badly reads as absent.
  const specs = stagesForRun(config, run);
  const created = await store.createTasks(run.number, specs);
  return { specs, created };
}
