import { EventEmitter } from 'node:events';
import {
  AdminServer,
  DEFAULT_GRACE_MS,
  TunnelError,
  awaitNative,
  callNative,
  createNativeHandle,
  describeValue,
  emitLog,
  loadNativeAddon,
  loadOrCreateEdgeIdentity,
  parseAdminListen,
  parseNativeJson,
  type IAdminAddress,
  type IEdgeConfig,
  type IEdgeEvents,
  type IEdgeStatus,
  type IEdgeStopOptions,
  type INativeAddon,
  type NativeHandle,
} from 'remoteingress-core';
import { resolveEdgeConfig, type INativeEdgeOptions } from './config.js';

export type TEdgeLifecycle = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped';

/**
 * The public side of the tunnel. Dials the hub, binds the ports the hub assigns and carries
 * every accepted connection through the tunnel; reconnects with backoff on its own. All sockets
 * live in the native addon; this class validates, starts, stops and reports.
 *
 * Events: `tunnelConnected`, `tunnelDisconnected`, `portsAssigned`, `portBindFailed`,
 * `firewallConfigUpdated`, `streamOpened`, `streamClosed`, `eventsDropped`, `crashRecovered`,
 * `log`, and `error` (only while a listener is attached).
 */
export class RemoteIngressEdge extends EventEmitter<IEdgeEvents> {
  #lifecycle: TEdgeLifecycle = 'idle';
  #native: INativeAddon | undefined;
  /** Kept referenced until edgeStop resolved: dropping it earlier would let the addon's handle be collected. */
  #handle: NativeHandle | undefined;
  #options: INativeEdgeOptions | undefined;
  #listening: { bindHost: string; port: number; fingerprint: string } | undefined;
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #admin: AdminServer | undefined;

  get lifecycle(): TEdgeLifecycle {
    return this.#lifecycle;
  }

  /** Where the admin endpoint (`adminListen`) listens, once `start()` resolved; `null` without one. */
  get adminAddress(): IAdminAddress | null {
    return this.#admin?.address ?? null;
  }

  /** The edge id in use, once `start()` was called with a valid config. */
  get edgeId(): string | null {
    return this.#options?.edgeId ?? null;
  }

  /** `host:port` of the hub this edge dials, once `start()` was called with a valid config (null for an edge that listens for its hub). */
  get hubAddress(): string | null {
    return this.#options === undefined || this.#options.listenForHub !== undefined ? null : `${this.#options.hubHost}:${this.#options.hubPort}`;
  }

  /** An edge that listens for its hub: where, and the fingerprint of its certificate (what the hub pins), once started. */
  get listening(): { bindHost: string; port: number; fingerprint: string } | null {
    return this.#listening ?? null;
  }

  /**
   * Validates the config (or decodes the token) and starts the connect loop. Resolves once the
   * loop runs, not when the tunnel is up: listen for `tunnelConnected` and `portsAssigned`.
   */
  start(config: IEdgeConfig): Promise<void> {
    if (this.#lifecycle !== 'idle') {
      return Promise.reject(
        new TunnelError('ERR_STATE', `edge.start() called while the edge is ${this.#lifecycle}; an edge starts once (create a new RemoteIngressEdge to start again)`),
      );
    }
    this.#lifecycle = 'starting';
    this.#starting = this.#start(config);
    return this.#starting;
  }

  async #start(config: IEdgeConfig): Promise<void> {
    let native: INativeAddon | undefined;
    let handle: NativeHandle | undefined;
    try {
      const { stateDir, ...options } = resolveEdgeConfig(config);
      const admin = config.adminListen === undefined ? undefined : parseAdminListen(config.adminListen, 'invalid edge config: adminListen');
      this.#options = options;
      if (options.listenForHub !== undefined && stateDir !== undefined) {
        const identity = await loadOrCreateEdgeIdentity(stateDir);
        options.listenForHub = { ...options.listenForHub, certPem: identity.certPem, keyPem: identity.keyPem };
        this.#listening = { bindHost: options.listenForHub.bindHost, port: options.listenForHub.port, fingerprint: identity.fingerprint };
        if (identity.created) emitLog(this, 'info', `created this edge's identity in ${stateDir}; fingerprint ${identity.fingerprint}`);
      }
      const addon = loadNativeAddon();
      native = addon;
      handle = createNativeHandle(this, addon, 'edge');
      if (options.dangerouslyDisableFingerprintPinning) {
        emitLog(this, 'warn', "fingerprint pinning is DISABLED: anyone on the path to the hub can impersonate it and read this edge's traffic");
      }
      const startedHandle = handle;
      await awaitNative('edgeStart', () => addon.edgeStart(startedHandle, JSON.stringify(options)));
      this.#native = addon;
      this.#handle = handle;
      if (admin !== undefined) {
        this.#admin = await AdminServer.start(admin, {
          role: 'edge',
          emitter: this,
          status: () => this.getStatus() as Record<string, unknown>,
          notReady: () => {
            if (this.#lifecycle !== 'running') return `the edge is ${this.#lifecycle}`;
            const status = this.getStatus();
            return status.state === 'connected' ? undefined : `no tunnel to the hub (${status.state})`;
          },
        });
      }
      this.#lifecycle = 'running';
    } catch (error) {
      if (native !== undefined && handle !== undefined) {
        const [addon, failed] = [native, handle];
        // Release whatever edgeStart may have begun; an edge that never started rejects this, which is fine.
        await Promise.resolve()
          .then(() => addon.edgeStop(failed, 0))
          .catch(() => undefined);
      }
      this.#native = undefined;
      this.#handle = undefined;
      this.#lifecycle = 'idle';
      throw error;
    }
  }

  /** Connection state, attempts, last error, RTT, bound ports and counters. */
  getStatus(): IEdgeStatus {
    const native = this.#native;
    const handle = this.#handle;
    if (native === undefined || handle === undefined || this.#lifecycle === 'stopped') {
      return {
        state: 'stopped',
        hubAddress: this.hubAddress,
        transport: null,
        connectedSince: null,
        attempts: 0,
        lastError: null,
        rttMs: null,
        quicPathMtu: null,
        ports: { tcp: [], udp: [] },
        openStreams: 0,
        bytesIn: 0,
        bytesOut: 0,
      };
    }
    return parseNativeJson<IEdgeStatus>('edgeStatus', callNative('edgeStatus', () => native.edgeStatus(handle)));
  }

  /**
   * Stops accepting, sends GOAWAY, lets open streams finish for up to `graceMs`, then closes
   * the rest and stops reconnecting. Idempotent: every call returns the same promise.
   */
  stop(options: IEdgeStopOptions = {}): Promise<void> {
    if (this.#stopping !== undefined) return this.#stopping;
    const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
    if (typeof graceMs !== 'number' || !Number.isInteger(graceMs) || graceMs < 0) {
      return Promise.reject(
        new TunnelError('ERR_INVALID_CONFIG', `invalid stop options: graceMs = ${describeValue(graceMs)}: must be a non-negative integer number of milliseconds`, {
          field: 'graceMs',
          value: graceMs,
        }),
      );
    }
    this.#stopping = this.#stop(graceMs);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<void> {
    if (this.#lifecycle === 'starting') await this.#starting?.catch(() => undefined);
    const native = this.#native;
    const handle = this.#handle;
    if (native === undefined || handle === undefined) {
      this.#lifecycle = 'stopped';
      return;
    }
    this.#lifecycle = 'stopping';
    try {
      await awaitNative('edgeStop', () => native.edgeStop(handle, graceMs));
      this.#handle = undefined;
      this.#native = undefined;
    } finally {
      this.#lifecycle = 'stopped';
      await this.#admin?.close();
    }
  }
}
