export { RemoteIngressEdge } from './edge.js';
export type { TEdgeLifecycle } from './edge.js';
export {
  resolveEdgeConfig,
  TRANSPORT_MODES,
  DEFAULT_TRANSPORT_MODE,
  DEFAULT_RECONNECT_BASE_MS,
  DEFAULT_RECONNECT_CAP_MS,
} from './config.js';
export type { INativeEdgeOptions } from './config.js';
export { parseConsumerXml, readConsumerXml } from './consumer-xml.js';
export type { IConsumerConfig, IConsumerService } from './consumer-xml.js';
export { DEFAULT_GRACE_MS, TunnelError, isTunnelError, encodeConnectionToken, decodeConnectionToken, encodeEdgeToken, decodeEdgeToken, normaliseFingerprint, loadOrCreateEdgeIdentity } from 'remoteingress-core';
export type {
  IEdgeConfig,
  IEdgeExplicitConfig,
  IEdgeCommonConfig,
  IEdgeListenConfig,
  IEdgeLocalService,
  IEdgeToken,
  IEdgeStatus,
  IEdgeServiceStatus,
  IEdgeServiceLimitReachedEvent,
  IEdgeEvents,
  IEdgeStopOptions,
  IReconnectConfig,
  IPerformanceConfig,
  ILimitsConfig,
  TEdgeState,
  TTransportMode,
  IEdgeTunnelConnectedEvent,
  IEdgeTunnelDisconnectedEvent,
  IEdgePortsAssignedEvent,
  IEdgePortBindFailedEvent,
  IEdgeFirewallConfigUpdatedEvent,
  IEdgeStreamOpenedEvent,
  IEdgeStreamClosedEvent,
  IPortFailure,
  ILogEvent,
  IEventsDroppedEvent,
  ICrashRecoveredEvent,
  IConnectionToken,
  TTunnelErrorCode,
  TDisconnectCode,
} from 'remoteingress-core';
