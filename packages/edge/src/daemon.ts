import { configureLogging, notifyReady, printAdminEndpoint, printDaemonEvents, printLine as out, type IDaemon } from 'remoteingress-core/cli';
import { resolveConsumerXml, type IEdgeCommandOptions } from './commands/edge.js';
import { notifyServiceManager, startWatchdog } from 'remoteingress-core';
import { RemoteIngressEdge } from './edge.js';

const EVENT_KINDS = [
  'tunnelConnected',
  'tunnelDisconnected',
  'tunnelReplaced',
  'portsAssigned',
  'portBindFailed',
  'firewallConfigUpdated',
  'serviceLimitReached',
  'publicAddressChanged',
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
  // systemd (Type=notify): a dialing edge is ready once its first tunnel is up; one that
  // listens for its hub is ready once it listens (the tunnel then comes when the hub dials).
  edge.on('tunnelConnected', (event) => notifyServiceManager(`STATUS=tunnel up to ${event.hubAddress} over ${event.transport}`));
  edge.on('tunnelDisconnected', (event) => notifyServiceManager(`STATUS=tunnel down: ${event.reason}`));
  if (listening !== null) {
    out(`edge ${edge.edgeId ?? ''} listening for its hub on ${listening.bindHost}:${listening.port} (TLS and QUIC) fingerprint ${listening.fingerprint}`);
    notifyReady();
  } else {
    if (edge.getStatus().state === 'connected') notifyReady();
    else edge.once('tunnelConnected', notifyReady);
    out(`edge ${edge.edgeId ?? ''} connecting to ${edge.hubAddress ?? ''} transport ${options.config.transportMode ?? 'quicWithFallback'}`);
  }
  printAdminEndpoint(edge.adminAddress);
  const stopWatchdog = startWatchdog(() => edge.getStatus());
  return {
    stop: () => {
      notifyServiceManager('STOPPING');
      stopWatchdog();
      return edge.stop({ graceMs: options.graceMs });
    },
  };
}
