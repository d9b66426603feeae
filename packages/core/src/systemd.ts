/**
 * systemd's notify protocol for `Type=notify` units, through the addon (`sd-notify`: Node has
 * no unix datagram sockets). Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
 *
 *   READY=1      the hub listens / the edge's first tunnel is up (a listening edge: it listens)
 *   STOPPING=1   the daemon starts to drain
 *   WATCHDOG=1   every half `WatchdogSec`, while the addon answers a status call
 *   STATUS=…     one line `systemctl status` shows
 */
import { loadNativeAddon } from './native.js';

/** Sends one state; returns whether a service manager listens. Failures are returned, not thrown: a daemon keeps running without its manager. */
export function notifyServiceManager(state: 'READY' | 'STOPPING' | 'WATCHDOG' | `STATUS=${string}`): { sent: boolean; error?: Error } {
  try {
    return { sent: loadNativeAddon().sdNotify(state.replace(/\n/g, ' ')) };
  } catch (error) {
    return { sent: false, error: error as Error };
  }
}

/**
 * With `WatchdogSec=` set on the unit, pings the manager every half interval as long as
 * `alive()` returns normally (it asks the addon for its status, so a wedged engine stops the
 * pings and systemd restarts the daemon). Returns a function that stops the pings.
 */
export function startWatchdog(alive: () => void): () => void {
  let intervalMs: number | null;
  try {
    intervalMs = loadNativeAddon().sdWatchdogMs();
  } catch {
    intervalMs = null;
  }
  if (intervalMs === null || !(intervalMs > 0)) return () => undefined;
  // Half the interval: systemd's own recommendation, so one late tick never trips it.
  const timer = setInterval(
    () => {
      try {
        alive();
      } catch {
        return;
      }
      notifyServiceManager('WATCHDOG');
    },
    Math.max(1, Math.floor(intervalMs / 2)),
  );
  timer.unref();
  return () => clearInterval(timer);
}
