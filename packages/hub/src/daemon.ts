import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { configureLogging, notifyReady, printAdminEndpoint, printDaemonEvents, printError as err, printLine as out, type IDaemon } from 'remoteingress-core/cli';
import { notifyServiceManager, startWatchdog, type TAllowedEdge } from 'remoteingress-core';
import { readAllowedEdges } from './allowed-edges-source.js';
import type { IHubCommandOptions } from './commands/hub.js';
import { RemoteIngressHub } from './hub.js';

/**
 * Editors save in several steps (truncate, write, rename); waiting 250 ms after the last change
 * turns one save into one reload instead of several, one of which might see a half-written file.
 */
const RELOAD_DEBOUNCE_MS = 250;
const EVENT_KINDS = ['edgeConnected', 'edgeDisconnected', 'authFailed', 'edgeDialFailed', 'eventsDropped', 'crashRecovered'] as const;

/** The `remoteingress-hub` command's work: start a hub, print its events, reload its allowed edges. */
export async function runHubDaemon(options: IHubCommandOptions): Promise<IDaemon> {
  const source = { file: options.allowedEdgesFile, json: options.allowedEdgesJson };
  const initial = await readAllowedEdges(source);

  configureLogging({ format: options.operations.logFormat, level: options.operations.logLevel });
  const hub = new RemoteIngressHub();
  printDaemonEvents(hub, EVENT_KINDS, options.logStreams);

  const started = await hub.start({
    tunnelPort: options.tunnelPort,
    targetHost: options.targetHost,
    bindHost: options.bindHost,
    stateDir: options.stateDir,
    allowedEdges: initial.edges as TAllowedEdge[],
    ...(options.performance === undefined ? {} : { performance: options.performance }),
    ...(options.limits === undefined ? {} : { limits: options.limits }),
    ...(options.operations.adminListen === undefined ? {} : { adminListen: options.operations.adminListen }),
  });
  out(`hub listening on ${options.bindHost}:${started.tunnelPort} fingerprint ${started.fingerprint}`);
  if (options.allowedEdgesFile === undefined && options.allowedEdgesJson === undefined) {
    err('no allowed edges: no edge can connect until you give --allowed-edges FILE (or REMOTEINGRESS_ALLOWED_EDGES_JSON)');
  }
  // systemd (Type=notify): ready once listening; the watchdog pings while the addon answers.
  notifyServiceManager(`STATUS=listening on ${options.bindHost}:${started.tunnelPort}`);
  notifyReady();
  const stopWatchdog = startWatchdog(() => hub.getStatus());
  printAdminEndpoint(hub.adminAddress);

  let lastText = initial.text;
  let reloading = Promise.resolve();
  const reload = (reason: string, force: boolean): void => {
    reloading = reloading.then(async () => {
      if (hub.state !== 'running') return;
      try {
        const next = await readAllowedEdges(source);
        if (!force && next.text === lastText) return;
        await hub.updateAllowedEdges(next.edges as TAllowedEdge[]);
        lastText = next.text;
        out(`allowed edges reloaded from ${next.origin} (${reason})`);
      } catch (error) {
        err(`allowed edges reload rejected (${reason}), keeping the previous set: ${(error as Error).message}`);
      }
    });
  };

  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  if (options.allowedEdgesFile !== undefined && options.watch) {
    const file = resolve(options.allowedEdgesFile);
    // Watch the directory, not the file: editors replace the file by renaming, which ends a file watch.
    watcher = watch(dirname(file), { persistent: false }, (_event, name) => {
      if (name !== null && name.toString() !== basename(file)) return;
      clearTimeout(debounce);
      debounce = setTimeout(() => reload('file changed', false), RELOAD_DEBOUNCE_MS);
    });
    watcher.on('error', (error) => err(`no longer watching ${file} (${error.message}); SIGHUP still reloads it`));
  }

  return {
    async stop() {
      notifyServiceManager('STOPPING');
      stopWatchdog();
      watcher?.close();
      clearTimeout(debounce);
      await hub.stop({ graceMs: options.graceMs });
    },
    reload() {
      if (options.allowedEdgesFile === undefined) {
        err(
          options.allowedEdgesJson === undefined
            ? 'SIGHUP ignored: no --allowed-edges file to reload'
            : 'SIGHUP ignored: the allowed edges came from REMOTEINGRESS_ALLOWED_EDGES_JSON, which cannot change',
        );
        return;
      }
      reload('SIGHUP', true);
    },
  };
}
