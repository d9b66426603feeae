import type { EventEmitter } from 'node:events';
import { TunnelError } from './errors.js';
import { callNative, type INativeAddon, type NativeHandle } from './native.js';
import type { ILogEvent, TLogLevel } from './types.js';

/**
 * Reports a failure on an emitter without ever crashing the process: Node throws when 'error'
 * is emitted with no listener, so without one the failure becomes a `log` event at level error.
 */
export function emitFailure(target: EventEmitter, error: Error): void {
  if (target.listenerCount('error') > 0) target.emit('error', error);
  else emitLog(target, 'error', error.message);
}

export function emitLog(target: EventEmitter, level: TLogLevel, message: string): void {
  const record: ILogEvent = { kind: 'log', level, message };
  target.emit('log', record);
}

/**
 * Returns the `onEvents` callback for one native handle. The addon delivers JSON arrays of
 * kind-tagged records (docs/native-api.md); each record is re-emitted on `target` under its
 * `kind`, unchanged. Kinds this build does not know are emitted too, so a newer addon's events
 * reach listeners that ask for them.
 *
 * A listener that throws does not cut the rest of the batch short: the batch is delivered, then
 * the first exception is re-thrown on its own tick, where it surfaces as any listener error would.
 */
export function createEventDispatcher(target: EventEmitter, source: string): (batchJson: string) => void {
  return (batchJson: string) => {
    let batch: unknown;
    try {
      batch = JSON.parse(batchJson);
    } catch {
      emitFailure(target, new TunnelError('ERR_INTERNAL', `${source}: the addon sent a malformed event batch: ${String(batchJson).slice(0, 120)}`));
      return;
    }
    if (!Array.isArray(batch)) {
      emitFailure(target, new TunnelError('ERR_INTERNAL', `${source}: the addon sent an event batch that is not an array`));
      return;
    }
    let thrown: { error: unknown } | undefined;
    for (const record of batch) {
      try {
        dispatchRecord(target, source, record);
      } catch (error) {
        thrown ??= { error };
      }
    }
    if (thrown !== undefined) {
      const { error } = thrown;
      process.nextTick(() => {
        throw error;
      });
    }
  };
}

function dispatchRecord(target: EventEmitter, source: string, record: unknown): void {
  const kind = typeof record === 'object' && record !== null ? (record as { kind?: unknown }).kind : undefined;
  if (typeof kind !== 'string' || kind === '') {
    emitLog(target, 'error', `${source}: ignored an event record without a kind: ${JSON.stringify(record)?.slice(0, 120)}`);
    return;
  }
  switch (kind) {
    case 'error': {
      const { code, message } = record as { code?: unknown; message?: unknown };
      const error = new TunnelError('ERR_INTERNAL', `${source}: ${typeof message === 'string' ? message : 'unspecified addon error'}`);
      if (typeof code === 'string') Object.assign(error, { nativeCode: code });
      emitFailure(target, error);
      return;
    }
    case 'eventsDropped':
      target.emit(kind, record);
      emitLog(target, 'warn', `${source}: ${(record as { count?: unknown }).count} events were dropped because JavaScript fell behind`);
      return;
    case 'crashRecovered':
      target.emit(kind, record);
      emitLog(target, 'warn', `${source}: recovered from an internal crash: ${JSON.stringify(record)}`);
      return;
    case 'streamClosed':
      target.emit(kind, record);
      if ((record as { code?: unknown }).code != null) target.emit(FAILED_STREAM_KIND, record);
      return;
    default:
      target.emit(kind, record);
  }
}

/** Events that need every per-stream record from the addon. */
const ALL_STREAM_KINDS: ReadonlyArray<string | symbol> = ['streamOpened', 'streamClosed'];
/** Derived from `streamClosed`: only failed streams' records. */
const FAILED_STREAM_KIND = 'streamFailed';

export type TStreamEventLevel = 'all' | 'failures' | 'none';

/** Which per-stream records `target`'s listeners need (counting `adding`, a listener about to be added). */
export function streamEventLevel(target: EventEmitter, adding?: string | symbol): TStreamEventLevel {
  const has = (kind: string | symbol): boolean => kind === adding || target.listenerCount(kind) > 0;
  if (ALL_STREAM_KINDS.some(has)) return 'all';
  return has(FAILED_STREAM_KIND) ? 'failures' : 'none';
}

/**
 * Keeps the addon's per-stream records at what `target`'s listeners need: every
 * `streamOpened`/`streamClosed` while one of those has a listener, only failed streams while
 * only `streamFailed` has one, none otherwise. At thousands of connections per second, records
 * nobody reads would cost the daemon CPU and, parsed into the JS heap, RSS it never returns.
 */
export function bindStreamEvents(target: EventEmitter, addon: INativeAddon, handle: NativeHandle): void {
  const set = (level: TStreamEventLevel): void => {
    try {
      addon.setStreamEvents(handle, level);
    } catch {
      // A released handle has no events left to switch.
    }
  };
  const relevant = (kind: string | symbol): boolean => ALL_STREAM_KINDS.includes(kind) || kind === FAILED_STREAM_KIND;
  set(streamEventLevel(target));
  // 'newListener' fires before the listener is added, 'removeListener' after it is gone.
  target.on('newListener', (kind: string | symbol) => {
    if (relevant(kind)) set(streamEventLevel(target, kind));
  });
  target.on('removeListener', (kind: string | symbol) => {
    if (relevant(kind)) set(streamEventLevel(target));
  });
}

/**
 * Creates the native handle behind a hub or edge object: its events are dispatched on `target`
 * and its per-stream records follow `target`'s listeners (`bindStreamEvents`).
 */
export function createNativeHandle(target: EventEmitter, addon: INativeAddon, side: 'hub' | 'edge'): NativeHandle {
  const dispatch = createEventDispatcher(target, side);
  const handle = side === 'hub' ? callNative('createHub', () => addon.createHub(dispatch)) : callNative('createEdge', () => addon.createEdge(dispatch));
  bindStreamEvents(target, addon, handle);
  return handle;
}
