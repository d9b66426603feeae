import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { TunnelError } from './errors.js';

/** Opaque napi External; kept referenced until the matching stop call has resolved. */
export type NativeHandle = object;
export type NativeEventCallback = (batchJson: string) => void;

/** The addon's JavaScript interface, as specified in docs/native-api.md. */
export interface INativeAddon {
  version(): string;
  createHub(onEvents: NativeEventCallback): NativeHandle;
  hubStart(handle: NativeHandle, optionsJson: string): Promise<string>;
  hubSetEdges(handle: NativeHandle, edgesJson: string): Promise<string>;
  hubStatus(handle: NativeHandle): string;
  hubStop(handle: NativeHandle, graceMs: number): Promise<void>;
  createEdge(onEvents: NativeEventCallback): NativeHandle;
  edgeStart(handle: NativeHandle, optionsJson: string): Promise<void>;
  edgeStatus(handle: NativeHandle): string;
  edgeStop(handle: NativeHandle, graceMs: number): Promise<void>;
  /** Which `streamOpened`/`streamClosed` records the handle delivers (default 'all'; 'failures' = only `streamClosed` with a code). */
  setStreamEvents(handle: NativeHandle, level: 'all' | 'failures' | 'none'): void;
  /** systemd's sd_notify: 'READY', 'STOPPING', 'WATCHDOG' or 'STATUS=…'; false when no manager listens (no NOTIFY_SOCKET). */
  sdNotify(state: string): boolean;
  /** The watchdog interval systemd asks this process for (WATCHDOG_USEC), in ms; null without one. */
  sdWatchdogMs(): number | null;
  /** Test hook: arms one panic inside the addon to prove containment. Never called by the product. */
  injectPanicForTest(component: 'hubListener' | 'tunnel' | 'edgeListener' | 'hubStream'): void;
}

const REQUIRED_FUNCTIONS: ReadonlyArray<keyof INativeAddon> = [
  'version',
  'createHub',
  'hubStart',
  'hubSetEdges',
  'hubStatus',
  'hubStop',
  'createEdge',
  'edgeStart',
  'edgeStatus',
  'edgeStop',
  'setStreamEvents',
  'sdNotify',
  'sdWatchdogMs',
];

/** `dist/native.js` → `packages/core/native/remoteingress.node`, where `npm run build:addon` puts it. */
export const NATIVE_ADDON_PATH = fileURLToPath(new URL('../native/remoteingress.node', import.meta.url));

let loaded: INativeAddon | undefined;

/** Loads the addon once per process; throws `ERR_ADDON_MISSING` with the fix if it is absent or unusable. */
export function loadNativeAddon(): INativeAddon {
  if (loaded !== undefined) return loaded;
  if (!existsSync(NATIVE_ADDON_PATH)) {
    throw new TunnelError(
      'ERR_ADDON_MISSING',
      `the native tunnel addon is not built (${NATIVE_ADDON_PATH} does not exist); run "npm run build:addon" in the repository root`,
    );
  }
  let addon: Partial<INativeAddon>;
  try {
    addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as Partial<INativeAddon>;
  } catch (error) {
    throw new TunnelError(
      'ERR_ADDON_MISSING',
      `the native tunnel addon at ${NATIVE_ADDON_PATH} cannot be loaded (${(error as Error).message}); rebuild it with "npm run build:addon"`,
      { cause: error },
    );
  }
  const missing = REQUIRED_FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new TunnelError(
      'ERR_ADDON_MISSING',
      `the native tunnel addon at ${NATIVE_ADDON_PATH} lacks ${missing.join(', ')} (built from an older tunnel-core?); rebuild it with "npm run build:addon"`,
    );
  }
  loaded = addon as INativeAddon;
  return loaded;
}

/** Runs a synchronous addon call, turning its error into a `TunnelError`. */
export function callNative<T>(operation: string, call: () => T): T {
  try {
    return call();
  } catch (error) {
    throw TunnelError.fromNative(error, operation);
  }
}

/** Awaits an asynchronous addon call, turning its rejection into a `TunnelError`. */
export async function awaitNative<T>(operation: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw TunnelError.fromNative(error, operation);
  }
}

/** Parses a JSON string the addon returned; a malformed one is an addon bug, reported as such. */
export function parseNativeJson<T>(operation: string, json: string): T {
  try {
    return JSON.parse(json) as T;
  } catch (error) {
    throw new TunnelError('ERR_INTERNAL', `${operation} returned malformed JSON: ${describeJson(json)}`, { cause: error });
  }
}

function describeJson(json: unknown): string {
  const text = String(json);
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}
