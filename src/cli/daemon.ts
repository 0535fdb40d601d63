import type { Argv, CommandModule } from 'yargs';
import { requireCommand } from '../config/index.js';
import { startDaemon } from '../daemon/daemon.js';
import { exitProcess } from '../daemon/process-exit.js';
import { superviseDaemon, withoutUndying } from '../daemon/undying.js';
import { createLogger } from '../log/logger.js';
import { openStore } from '../store/open-store.js';
import { configFromArgs, runCommand, type GlobalArgs } from './common.js';
import { portFromOption, portOptionSpec } from './port-option.js';
import { assertHostReady } from '../daemon/host-check.js';

interface DaemonArgs extends GlobalArgs {
  slots?: string;
  once?: boolean;
  order?: string;
  undying?: boolean;
  metrics?: string;
  inspect?: string;
}

export const daemonCommand: CommandModule<GlobalArgs, DaemonArgs> = {
  command: 'daemon',
  describe: 'claim and process runs until stopped (^C, SIGTERM or SIGHUP releases running runs)',
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      // A string, so that `--slots abc` is judged (and named) by the configuration's check, not turned into NaN.
      .option('slots', { type: 'string', describe: 'runs processed at once by this daemon (default 1)' })
      .option('once', { type: 'boolean', describe: 'process until nothing is eligible, then exit 0' })
      .option('order', { type: 'string', choices: ['newest', 'oldest'], describe: 'after priority, which start first' })
      .option('undying', {
        type: 'boolean',
        describe: 'restart after a crash, pausing timeouts.restart_pause; each crash goes to the operator log',
      })
      .option(
        'metrics',
        portOptionSpec(
          'serve Prometheus metrics on http://<observe.bind>:PORT/metrics; PORT defaults to observe.metrics_port (9391), 0 = any free port',
        ),
      )
      .option(
        'inspect',
        portOptionSpec(
          'serve the live state machines (for `runwarden inspect`, the Stately inspector) on ws://<observe.bind>:PORT; PORT defaults to observe.inspect_port (9390), 0 = any free port',
        ),
      )
      .example('$0 daemon --slots 4', 'process up to 4 runs at once with ./runwarden.yaml')
      .example('$0 daemon --once --store sqlite:/data/runs.db', 'drain what is eligible now, then exit')
      .example('$0 daemon --metrics=9400', 'also serve Prometheus metrics on http://127.0.0.1:9400/metrics')
      .example('$0 daemon --undying', 'keep a daemon up through crashes (an unreachable store, a fatal error)')
      .example(`$0 daemon --set 'process.command=["strax-process","{number}","{output}"]'`, 'give the command inline'),
  handler: (args) =>
    runCommand(async () => {
      const config = configFromArgs(args, {
        ...(args.slots !== undefined ? { slots: args.slots } : {}),
        ...(args.order !== undefined ? { order: args.order } : {}),
      });
      requireCommand(config);
      // Host-level faults (executable, cwd, output and log directories) refuse to start, naming the field.
      await assertHostReady(config);
      const metricsPort = portFromOption('metrics', args.metrics, config.observe.metrics_port);
      const inspectPort = portFromOption('inspect', args.inspect, config.observe.inspect_port);
      if (args.undying) {
        return superviseDaemon({
          args: withoutUndying(process.argv.slice(2)),
          host: config.host,
          pauseMs: config.timeouts.restart_pause,
          logger: createLogger({ level: config.log_level, host: config.host }),
          openStore: () => openStore(config.store, { idlePollMs: config.timeouts.idle_poll }),
        });
      }
      const store = await openStore(config.store, { idlePollMs: config.timeouts.idle_poll });
      const logger = createLogger({ level: config.log_level, host: config.host, store });
      const metrics =
        metricsPort === undefined
          ? undefined
          : // Loaded only when asked for: prom-client and the WebSocket libraries cost every start ~120 ms.
            await (await import('../daemon/metrics-server.js')).serveDaemonMetrics({ config, store, logger, port: metricsPort }).catch(async (error: unknown) => {
              await store.close();
              throw error;
            });
      const inspect =
        inspectPort === undefined
          ? undefined
          : await (await import('../daemon/inspect-server.js')).startInspectServer({ bind: config.observe.bind, port: inspectPort, logger }).catch(async (error: unknown) => {
              await metrics?.close();
              await store.close();
              throw error;
            });
      const daemon = startDaemon({
        config,
        store,
        logger,
        once: args.once ?? false,
        handleSignals: true,
        inspectors: [...(metrics ? [metrics.inspector] : []), ...(inspect ? [inspect.inspector] : [])],
      });
      const code = await daemon.done;
      // The process ends here, explicitly: nothing left holding the event loop may keep a daemon without a
      // working host actor alive (a fatal error has already killed every process group).
      return exitProcess(code, [
        () => metrics?.close(),
        () => inspect?.close(),
        () => logger.flush(),
        () => store.close(),
      ]);
    }),
};
