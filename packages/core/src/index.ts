export { TunnelError, isTunnelError } from './errors.js';
export { AdminServer, parseAdminListen } from './admin.js';
export { notifyServiceManager, startWatchdog } from './systemd.js';
export { defaultStateDir, ROOT_STATE_DIR } from './state-dir.js';
export type { IAdminAddress, IAdminSource } from './admin.js';
export type { TTunnelErrorCode, TDisconnectCode, IConfigIssue, ITunnelErrorDetails } from './errors.js';
export type * from './types.js';
export {
  validateAllowedEdges,
  validatePerformance,
  validateLimits,
  parseLimitsJson,
  parseJsonText,
  parsePerformanceJson,
  isValidHost,
  isValidIp,
  isValidIpOrCidr,
  isValidPort,
  describeValue,
  EDGE_ID_PATTERN,
  MIN_SECRET_LENGTH,
  MIN_BUFFER_BYTES,
} from './validation.js';
export type { IValidateEdgesOptions } from './validation.js';
export { encodeConnectionToken, decodeConnectionToken, encodeEdgeToken, decodeEdgeToken, normaliseFingerprint } from './token.js';
export type { IConnectionToken, IEdgeToken } from './token.js';
export { loadOrCreateHubIdentity, loadOrCreateEdgeIdentity, certificateFingerprint, HUB_CERT_FILE, HUB_KEY_FILE, EDGE_CERT_FILE, EDGE_KEY_FILE } from './identity.js';
export type { IHubIdentity } from './identity.js';
export { loadNativeAddon, callNative, awaitNative, parseNativeJson, NATIVE_ADDON_PATH } from './native.js';
export type { INativeAddon, NativeHandle, NativeEventCallback } from './native.js';
export { createEventDispatcher, createNativeHandle, emitFailure, emitLog, streamEventLevel, type TStreamEventLevel } from './events.js';
export { diffAllowedEdges, describeDiff } from './reconcile.js';
export type { IAllowedEdgesDiff, IEdgeChange } from './reconcile.js';
export { DEFAULT_GRACE_MS } from './constants.js';
