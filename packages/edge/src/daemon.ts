import { formatEventLine, type IDaemon } from 'remoteingress-core/cli';
import type { IEdgeEvents } from 'remoteingress-core';
import type { IEdgeCommandOptions } from './commands/edge.js';
import { RemoteIngressEdge } from './edge.js';

const EVENT_KINDS = [
  'tunnelConnected',
  'tunnelDisconnected',
  'portsAssigned',
  'portBindFailed',
  'firewallConfigUpdated',
  'eventsDropped',
  'crashRecovered',
] as const;
/** Printed only with --log-streams (failed streams always are): listening switches the addon's per-stream events on. */
const STREAM_EVENT_KINDS = ['streamOpened', 'streamClosed'] as const;

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}
function err(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** The `remoteingress-edge` command's work: start an edge and print its events. */
export async function runEdgeDaemon(options: IEdgeCommandOptions): Promise<IDaemon> {
  const edge = new RemoteIngressEdge();
  for (const kind of EVENT_KINDS) edge.on(kind, (event: IEdgeEvents[typeof kind][0]) => out(formatEventLine({ ...event })));
  if (options.logStreams) {
    for (const kind of STREAM_EVENT_KINDS) edge.on(kind, (event: IEdgeEvents[typeof kind][0]) => out(formatEventLine({ ...event })));
  } else {
    // Failed streams are always worth a line (a target refusing, a client reset); only they cost.
    edge.on('streamFailed', (event) => out(formatEventLine({ ...event })));
  }
  edge.on('log', (event) => (event.level === 'info' ? out : err)(formatEventLine({ ...event })));
  await edge.start(options.config);
  out(`edge ${edge.edgeId ?? ''} connecting to ${edge.hubAddress ?? ''} transport ${options.config.transportMode ?? 'quicWithFallback'}`);
  return {
    stop: () => edge.stop({ graceMs: options.graceMs }),
  };
}
