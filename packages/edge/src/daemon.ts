import { configureLogging, printDaemonEvents, printLine as out, type IDaemon } from 'remoteingress-core/cli';
import { resolveConsumerXml, type IEdgeCommandOptions } from './commands/edge.js';
import { RemoteIngressEdge } from './edge.js';

const EVENT_KINDS = [
  'tunnelConnected',
  'tunnelDisconnected',
  'portsAssigned',
  'portBindFailed',
  'firewallConfigUpdated',
  'serviceLimitReached',
  'eventsDropped',
  'crashRecovered',
  'authFailed',
] as const;

/** The `remoteingress-edge` command's work: start an edge and print its events. */
export async function runEdgeDaemon(options: IEdgeCommandOptions): Promise<IDaemon> {
  // A broken consumer.xml fails here, before anything starts.
  if (options.operations !== undefined) configureLogging({ format: options.operations.logFormat, level: options.operations.logLevel });
  const config = await resolveConsumerXml(options);
  const edge = new RemoteIngressEdge();
  printDaemonEvents(edge, EVENT_KINDS, options.logStreams);
  await edge.start(config);
  const listening = edge.listening;
  if (listening !== null) {
    out(`edge ${edge.edgeId ?? ''} listening for its hub on ${listening.bindHost}:${listening.port} (TLS and QUIC) fingerprint ${listening.fingerprint}`);
  } else {
    out(`edge ${edge.edgeId ?? ''} connecting to ${edge.hubAddress ?? ''} transport ${options.config.transportMode ?? 'quicWithFallback'}`);
  }
  const admin = edge.adminAddress;
  if (admin !== null) out(`admin endpoint on http://${admin.host.includes(':') ? `[${admin.host}]` : admin.host}:${admin.port} (/metrics /healthz /readyz /status)`);
  return {
    stop: () => edge.stop({ graceMs: options.graceMs }),
  };
}
