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

/** `dist/native.js` → `packages/core/native/remoteingress.node`, where `npm run build:addon` puts it (a checkout). */
export const NATIVE_ADDON_PATH = fileURLToPath(new URL('../native/remoteingress.node', import.meta.url));

/** Platforms with a prebuilt addon package (`remoteingress-core-<platform>`, an optional dependency). */
export const PREBUILT_PLATFORMS = ['linux-x64-gnu'] as const;

/** napi-rs' platform naming: `linux-x64-gnu`, `linux-arm64-musl`, `darwin-arm64`, `win32-x64-msvc`. */
export function nativePlatform(): string {
  const base = `${process.platform}-${process.arch}`;
  if (process.platform === 'linux') {
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
    return `${base}-${report?.header?.glibcVersionRuntime === undefined ? 'musl' : 'gnu'}`;
  }
  return process.platform === 'win32' ? `${base}-msvc` : base;
}

const BUILD_FROM_SOURCE =
  'build it from source: git clone the remoteingress repository, run "npm run build:addon" there (needs Rust from rustup and a C compiler), ' +
  'and set REMOTEINGRESS_ADDON to the packages/core/native/remoteingress.node it wrote';

/** Where the addon comes from, in order: REMOTEINGRESS_ADDON, a checkout's build, the platform package. */
function locateAddon(): { path: string; origin: string } {
  const explicit = process.env.REMOTEINGRESS_ADDON;
  if (explicit !== undefined && explicit !== '') {
    if (!existsSync(explicit)) throw new TunnelError('ERR_ADDON_MISSING', `REMOTEINGRESS_ADDON = ${JSON.stringify(explicit)}: no such file`);
    return { path: explicit, origin: 'REMOTEINGRESS_ADDON' };
  }
  if (existsSync(NATIVE_ADDON_PATH)) return { path: NATIVE_ADDON_PATH, origin: 'this checkout (npm run build:addon)' };
  const platform = nativePlatform();
  const name = `remoteingress-core-${platform}`;
  try {
    return { path: createRequire(import.meta.url).resolve(name), origin: name };
  } catch {
    const prebuilt = (PREBUILT_PLATFORMS as readonly string[]).includes(platform);
    throw new TunnelError(
      'ERR_ADDON_MISSING',
      prebuilt
        ? `the native tunnel addon for ${platform} is not installed: the optional dependency ${name} is missing (installed with --omit=optional, or by a package manager that skips optional dependencies?); reinstall, or ${BUILD_FROM_SOURCE}`
        : `there is no prebuilt native tunnel addon for ${platform} (prebuilt: ${PREBUILT_PLATFORMS.join(', ')}); ${BUILD_FROM_SOURCE}`,
    );
  }
}

let loaded: INativeAddon | undefined;

/** Loads the addon once per process; throws `ERR_ADDON_MISSING` with the fix if it is absent or unusable. */
export function loadNativeAddon(): INativeAddon {
  if (loaded !== undefined) return loaded;
  const { path, origin } = locateAddon();
  let addon: Partial<INativeAddon>;
  try {
    addon = createRequire(import.meta.url)(path) as Partial<INativeAddon>;
  } catch (error) {
    throw new TunnelError(
      'ERR_ADDON_MISSING',
      `the native tunnel addon at ${path} (from ${origin}) cannot be loaded (${(error as Error).message}); ${BUILD_FROM_SOURCE}`,
      { cause: error },
    );
  }
  const missing = REQUIRED_FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new TunnelError(
      'ERR_ADDON_MISSING',
      `the native tunnel addon at ${path} (from ${origin}) lacks ${missing.join(', ')} (built from an older tunnel-core?); rebuild it with "npm run build:addon"`,
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
