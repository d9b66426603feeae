/**
 * Where a hub keeps its identity when no state directory is given (the reference API's
 * `hub.start({ tunnelPort, targetHost })` has none): `REMOTEINGRESS_STATE_DIR`, else
 * `/var/lib/remoteingress` for root (systemd's StateDirectory convention), else the XDG state
 * directory (`$XDG_STATE_HOME/remoteingress`, `~/.local/state/remoteingress`).
 */
import { homedir } from 'node:os';
import { join } from 'node:path';

export const ROOT_STATE_DIR = '/var/lib/remoteingress';

export function defaultStateDir(env: Record<string, string | undefined> = process.env, uid: number | undefined = process.getuid?.()): string {
  const explicit = env.REMOTEINGRESS_STATE_DIR;
  if (explicit !== undefined && explicit !== '') return explicit;
  if (uid === 0) return ROOT_STATE_DIR;
  const xdg = env.XDG_STATE_HOME;
  // The XDG spec: a relative XDG_STATE_HOME is invalid and must be ignored.
  const base = xdg !== undefined && xdg.startsWith('/') ? xdg : join(env.HOME ?? homedir(), '.local', 'state');
  return join(base, 'remoteingress');
}
