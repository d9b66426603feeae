import { EventEmitter } from 'node:events';
import {
  AdminServer,
  DEFAULT_GRACE_MS,
  TunnelError,
  defaultStateDir,
  awaitNative,
  callNative,
  createNativeHandle,
  describeDiff,
  describeValue,
  diffAllowedEdges,
  emitLog,
  isValidHost,
  isValidIp,
  loadNativeAddon,
  loadOrCreateHubIdentity,
  parseAdminListen,
  parseNativeJson,
  validateAllowedEdges,
  validateLimits,
  validatePerformance,
  type IAdminAddress,
  type IHubConfig,
  type IHubEvents,
  type IHubStatus,
  type IHubStopOptions,
  type ILimitsConfig,
  type INativeAddon,
  type INormalisedEdge,
  type IPerformanceConfig,
  type NativeHandle,
  type TAllowedEdge,
} from 'remoteingress-core';

/** What `start()` resolves to. */
export interface IHubStarted {
  /** The bound tunnel port (the real one when `tunnelPort: 0` was asked for). */
  tunnelPort: number;
  /** SHA-256 of the hub certificate DER, 64 lowercase hex digits: what edges pin. */
  fingerprint: string;
}

export type THubState = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped';

const DEFAULT_TARGET_HOST = '127.0.0.1';
const DEFAULT_BIND_HOST = '0.0.0.0';
const CONFIG_KEYS = new Set(['tunnelPort', 'targetHost', 'stateDir', 'bindHost', 'allowedEdges', 'performance', 'limits', 'adminListen']);

interface IResolvedHubConfig {
  tunnelPort: number;
  targetHost: string;
  stateDir: string;
  bindHost: string;
  edges: INormalisedEdge[];
  performance: IPerformanceConfig | undefined;
  limits: ILimitsConfig | undefined;
  admin: IAdminAddress | undefined;
}

function invalid(field: string, value: unknown, problem: string): TunnelError {
  return new TunnelError('ERR_INVALID_CONFIG', `invalid hub config: ${field} = ${describeValue(value)}: ${problem}`, { field, value });
}

function resolveHubConfig(config: IHubConfig): IResolvedHubConfig {
  if (typeof config !== 'object' || config === null) throw invalid('config', config, 'must be an object {tunnelPort, stateDir, …}');
  for (const key of Object.keys(config)) {
    if (!CONFIG_KEYS.has(key)) {
      throw invalid(key, (config as unknown as Record<string, unknown>)[key], `unknown option (expected one of ${[...CONFIG_KEYS].join(', ')})`);
    }
  }
  const { tunnelPort, stateDir } = config;
  if (typeof tunnelPort !== 'number' || !Number.isInteger(tunnelPort) || tunnelPort < 0 || tunnelPort > 65535) {
    throw invalid('tunnelPort', tunnelPort, 'must be an integer from 0 to 65535 (0 picks a free port)');
  }
  const targetHost = config.targetHost ?? DEFAULT_TARGET_HOST;
  if (!isValidHost(targetHost)) throw invalid('targetHost', targetHost, 'must be a host name or IP address');
  const bindHost = config.bindHost ?? DEFAULT_BIND_HOST;
  if (!isValidIp(bindHost)) throw invalid('bindHost', bindHost, 'must be an IPv4 or IPv6 address, e.g. 0.0.0.0 or ::');
  if (stateDir !== undefined && (typeof stateDir !== 'string' || stateDir === '')) throw invalid('stateDir', stateDir, 'must be a directory path');
  const performance = config.performance === undefined ? undefined : validatePerformance(config.performance);
  const limits = config.limits === undefined ? undefined : validateLimits(config.limits);
  const edges = validateAllowedEdges(config.allowedEdges ?? [], { targetHost });
  const admin = config.adminListen === undefined ? undefined : parseAdminListen(config.adminListen, 'invalid hub config: adminListen');
  return { tunnelPort, targetHost, stateDir: stateDir ?? defaultStateDir(), bindHost, edges, performance, limits, admin };
}

/**
 * The private side of the tunnel. Holds the allowed edges, authenticates them and forwards every
 * tunneled connection to its target with a PROXY header. All sockets live in the native addon;
 * this class validates, reconciles and reports.
 *
 * Events: `edgeConnected`, `edgeDisconnected`, `authFailed`, `streamOpened`, `streamClosed`,
 * `eventsDropped`, `crashRecovered`, `log`, and `error` (only while a listener is attached).
 */
export class RemoteIngressHub extends EventEmitter<IHubEvents> {
  #state: THubState = 'idle';
  #native: INativeAddon | undefined;
  /** Kept referenced until hubStop resolved: dropping it earlier would let the addon's handle be collected. */
  #handle: NativeHandle | undefined;
  #targetHost = DEFAULT_TARGET_HOST;
  #started: IHubStarted | undefined;
  #edges: INormalisedEdge[] = [];
  /** Updates are applied one at a time, in call order. */
  #updates: Promise<unknown> = Promise.resolve();
  #starting: Promise<IHubStarted> | undefined;
  #stopping: Promise<void> | undefined;
  #admin: AdminServer | undefined;

  get state(): THubState {
    return this.#state;
  }

  /** SHA-256 of the hub certificate DER (64 lowercase hex), once `start()` resolved. */
  get fingerprint(): string | null {
    return this.#started?.fingerprint ?? null;
  }

  /** Where the admin endpoint (`adminListen`) listens, once `start()` resolved; `null` without one. */
  get adminAddress(): IAdminAddress | null {
    return this.#admin?.address ?? null;
  }

  /** The bound tunnel port, once `start()` resolved. */
  get tunnelPort(): number | null {
    return this.#started?.tunnelPort ?? null;
  }

  /** Creates or loads the TLS identity, binds the tunnel port and applies `allowedEdges`. */
  start(config: IHubConfig): Promise<IHubStarted> {
    if (this.#state !== 'idle') {
      return Promise.reject(
        new TunnelError('ERR_STATE', `hub.start() called while the hub is ${this.#state}; a hub starts once (create a new RemoteIngressHub to start again)`),
      );
    }
    this.#state = 'starting';
    this.#starting = this.#start(config);
    return this.#starting;
  }

  async #start(config: IHubConfig): Promise<IHubStarted> {
    let native: INativeAddon | undefined;
    let handle: NativeHandle | undefined;
    try {
      const resolved = resolveHubConfig(config);
      const identity = await loadOrCreateHubIdentity(resolved.stateDir);
      const addon = loadNativeAddon();
      native = addon;
      handle = createNativeHandle(this, addon, 'hub');
      const options = {
        tunnelPort: resolved.tunnelPort,
        bindHost: resolved.bindHost,
        certPem: identity.certPem,
        keyPem: identity.keyPem,
        ...(resolved.performance === undefined ? {} : { performance: resolved.performance }),
        ...(resolved.limits === undefined ? {} : { limits: resolved.limits }),
      };
      const startedHandle = handle;
      const reply = await awaitNative('hubStart', () => addon.hubStart(startedHandle, JSON.stringify(options)));
      const started = parseNativeJson<Partial<IHubStarted>>('hubStart', reply);
      if (typeof started.tunnelPort !== 'number') {
        throw new TunnelError('ERR_INTERNAL', `hubStart resolved without a tunnelPort: ${describeValue(reply)}`);
      }
      if (typeof started.fingerprint === 'string' && started.fingerprint !== identity.fingerprint) {
        // Edges pin the fingerprint computed here (tokens are minted without the addon), so a
        // disagreement would make every edge fail pinning: refuse to run instead.
        throw new TunnelError(
          'ERR_INTERNAL',
          `the addon reports certificate fingerprint ${started.fingerprint} but ${identity.certPath} has ${identity.fingerprint}`,
        );
      }
      this.#native = addon;
      this.#handle = handle;
      this.#targetHost = resolved.targetHost;
      await this.#applyEdges(resolved.edges);
      if (resolved.admin !== undefined) {
        this.#admin = await AdminServer.start(resolved.admin, {
          role: 'hub',
          emitter: this,
          status: () => this.getStatus() as Record<string, unknown>,
          notReady: () => (this.#state === 'running' ? undefined : `the hub is ${this.#state}`),
        });
      }
      this.#started = { tunnelPort: started.tunnelPort, fingerprint: identity.fingerprint };
      this.#state = 'running';
      return this.#started;
    } catch (error) {
      if (native !== undefined && handle !== undefined) {
        // Release whatever hubStart may have bound; a hub that never started rejects this, which is fine.
        const [addon, failed] = [native, handle];
        await Promise.resolve()
          .then(() => addon.hubStop(failed, 0))
          .catch(() => undefined);
      }
      this.#native = undefined;
      this.#handle = undefined;
      this.#state = 'idle';
      throw error;
    }
  }

  /**
   * Replaces the complete set of allowed edges. The whole list is validated first: on any
   * problem this rejects with `ERR_INVALID_CONFIG` naming edge, field and value, and nothing
   * changes. Otherwise new edges may connect, removed ones are disconnected, changed ports are
   * pushed to connected edges, and streams on unchanged ports carry on.
   */
  async updateAllowedEdges(edges: TAllowedEdge[]): Promise<void> {
    if (this.#state !== 'running' && this.#state !== 'starting') {
      throw new TunnelError(
        'ERR_STATE',
        `hub.updateAllowedEdges() called while the hub is ${this.#state}; pass allowedEdges to start() or update after start() resolved`,
      );
    }
    if (this.#state === 'starting') await this.#starting;
    const normalised = validateAllowedEdges(edges, { targetHost: this.#targetHost });
    await this.#applyEdges(normalised);
  }

  #applyEdges(edges: INormalisedEdge[]): Promise<void> {
    const apply = async (): Promise<void> => {
      const native = this.#native;
      const handle = this.#handle;
      if (native === undefined || handle === undefined || this.#state === 'stopping' || this.#state === 'stopped') {
        throw new TunnelError('ERR_STATE', 'the hub stopped before the allowed-edges update was applied');
      }
      const diff = diffAllowedEdges(this.#edges, edges);
      const reply = await awaitNative('hubSetEdges', () => native.hubSetEdges(handle, JSON.stringify(edges)));
      const { generation } = parseNativeJson<{ generation?: unknown }>('hubSetEdges', reply);
      this.#edges = edges;
      emitLog(this, 'info', `allowed edges applied (generation ${String(generation)}, ${edges.length} edges): ${describeDiff(diff)}`);
    };
    const run = this.#updates.then(apply, apply);
    this.#updates = run.catch(() => undefined);
    return run;
  }

  /** The addon's view: tunnel port, fingerprint, and each connected edge with its counters. */
  getStatus(): IHubStatus {
    const native = this.#native;
    const handle = this.#handle;
    if (native === undefined || handle === undefined || this.#state === 'stopped') {
      return {
        running: false,
        tunnelPort: this.tunnelPort,
        fingerprint: this.fingerprint,
        allowedEdges: this.#edges.length,
        edges: [],
        connectedEdges: [],
      };
    }
    const status = parseNativeJson<IHubStatus>('hubStatus', callNative('hubStatus', () => native.hubStatus(handle)));
    // The reference API's view of the same edges.
    status.connectedEdges = status.edges.map((e) => ({ edgeId: e.edgeId, connectedAt: e.connectedSince, activeStreams: e.openStreams }));
    return status;
  }

  /**
   * Stops accepting, sends GOAWAY to every edge, lets open streams finish for up to `graceMs`,
   * then closes the rest. Idempotent: every call returns the same promise, which resolves once
   * everything is released.
   */
  stop(options: IHubStopOptions = {}): Promise<void> {
    if (this.#stopping !== undefined) return this.#stopping;
    const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
    if (typeof graceMs !== 'number' || !Number.isInteger(graceMs) || graceMs < 0) {
      return Promise.reject(invalid('graceMs', graceMs, 'must be a non-negative integer number of milliseconds'));
    }
    this.#stopping = this.#stop(graceMs);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<void> {
    if (this.#state === 'starting') await this.#starting?.catch(() => undefined);
    const native = this.#native;
    const handle = this.#handle;
    if (native === undefined || handle === undefined) {
      this.#state = 'stopped';
      return;
    }
    this.#state = 'stopping';
    await this.#updates;
    try {
      await awaitNative('hubStop', () => native.hubStop(handle, graceMs));
      this.#handle = undefined;
      this.#native = undefined;
    } finally {
      this.#state = 'stopped';
      // Scrapes keep working while the hub drains; /readyz says it is stopping.
      await this.#admin?.close();
    }
  }
}
