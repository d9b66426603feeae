import { X509Certificate, createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { chmod, link, mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { TunnelError } from './errors.js';

export const HUB_CERT_FILE = 'hub-cert.pem';
export const HUB_KEY_FILE = 'hub-key.pem';
/** An edge that listens for its hub (`--listen-for-hub`) has an identity of its own. */
export const EDGE_CERT_FILE = 'edge-cert.pem';
export const EDGE_KEY_FILE = 'edge-key.pem';

/**
 * How long a process that lost the race to create the identity waits for the winner to finish
 * writing the certificate; key generation and signing take milliseconds, so 5 s is generous.
 */
const CREATION_WAIT_MS = 5000;
/** Polling every 50 ms costs nothing over a 5 s wait and adds at most 50 ms to the loser's start. */
const CREATION_POLL_MS = 50;

/** The hub's TLS identity as the addon wants it (PEM, key in PKCS#8). */
export interface IHubIdentity {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate DER, 64 lowercase hex digits — what edges pin. */
  fingerprint: string;
  certPath: string;
  keyPath: string;
  /** True when this call generated the identity. */
  created: boolean;
}

/** Lowercase hex SHA-256 of the certificate DER: the value edges pin and the addon reports. */
export function certificateFingerprint(cert: string | X509Certificate): string {
  const parsed = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  return createHash('sha256').update(parsed.raw).digest('hex');
}

function identityError(message: string, cause?: unknown): TunnelError {
  return new TunnelError('ERR_IDENTITY', message, { cause });
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw identityError(`cannot read ${path}: ${(error as Error).message}`, error);
  }
}

function checkPair(certPem: string, keyPem: string, certPath: string, keyPath: string): string {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (error) {
    throw identityError(`${certPath} is not a PEM certificate (delete it and its key to create a new identity)`, error);
  }
  let matches: boolean;
  try {
    matches = cert.checkPrivateKey(createPrivateKey(keyPem));
  } catch (error) {
    throw identityError(`${keyPath} is not a PEM private key (delete both files to create a new identity)`, error);
  }
  if (!matches) throw identityError(`${keyPath} does not belong to ${certPath}; delete both files to create a new identity`);
  return certificateFingerprint(cert);
}

/**
 * Creates a new identity in a short-lived child process. A worker thread was tried first: its heap
 * goes when it ends, but the parts of Node it runs (crypto, module loading, a second isolate) stay
 * mapped in the daemon, ~5 MiB of an idle hub's RSS for the rest of its life.
 */
function generate(): Promise<{ certPem: string; keyPem: string }> {
  return new Promise((resolve, reject) => {
    // The compiled helper sits next to this module in dist/; when this module runs from its
    // TypeScript source (the test runner), the compiled copy is in ../dist.
    const here = import.meta.url;
    const script = fileURLToPath(here.endsWith('.ts') ? new URL('../dist/identity-worker.js', here) : new URL('./identity-worker.js', here));
    // No execArgv: the daemon's own flags (an inspector port, say) are not for the helper.
    const child = fork(script, [], { execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    let settled = false;
    child.once('message', (m: { identity?: { certPem: string; keyPem: string }; error?: string }) => {
      settled = true;
      if (m.identity !== undefined) resolve(m.identity);
      else reject(new Error(m.error ?? 'identity helper failed'));
    });
    child.once('error', (error) => {
      settled = true;
      reject(error);
    });
    child.once('exit', (code, signal) => {
      if (!settled) reject(new Error(`identity helper exited (${signal ?? `code ${code}`}) without an identity`));
    });
  });
}

/**
 * Loads the hub's identity from `stateDir`, creating it on first use: an ECDSA P-256 key
 * (PKCS#8, mode 0600) and a self-signed certificate, in a directory created with mode 0700.
 * Safe against two processes starting at once (e.g. the hub and `remoteingress-hub token`):
 * files are written under temporary names and linked into place, so exactly one pair wins.
 */
export function loadOrCreateHubIdentity(stateDir: string): Promise<IHubIdentity> {
  return loadOrCreateIdentity(stateDir, HUB_CERT_FILE, HUB_KEY_FILE, 'hub');
}

/**
 * Loads or creates the identity of an edge that listens for its hub (the hub pins its
 * fingerprint), exactly as the hub's: `edge-cert.pem` and `edge-key.pem` in `stateDir`.
 */
export function loadOrCreateEdgeIdentity(stateDir: string): Promise<IHubIdentity> {
  return loadOrCreateIdentity(stateDir, EDGE_CERT_FILE, EDGE_KEY_FILE, 'edge');
}

async function loadOrCreateIdentity(stateDir: string, certFile: string, keyFile: string, role: string): Promise<IHubIdentity> {
  if (typeof stateDir !== 'string' || stateDir === '') {
    throw new TunnelError('ERR_INVALID_CONFIG', `stateDir = ${JSON.stringify(stateDir)}: must be a directory path`, {
      field: 'stateDir',
      value: stateDir,
    });
  }
  const certPath = join(stateDir, certFile);
  const keyPath = join(stateDir, keyFile);
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw identityError(`cannot create state directory ${stateDir}: ${(error as Error).message}`, error);
  }

  const existing = await loadExisting(certPath, keyPath);
  if (existing !== null) return existing;

  const { certPem, keyPem } = await generate();
  const suffix = `.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const keyTmp = keyPath + suffix;
  const certTmp = certPath + suffix;
  try {
    await writeFile(keyTmp, keyPem, { mode: 0o600, flag: 'wx' });
    await writeFile(certTmp, certPem, { mode: 0o644, flag: 'wx' });
    try {
      // link() fails with EEXIST instead of overwriting: the key decides who won the race.
      await link(keyTmp, keyPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const winner = await loadExisting(certPath, keyPath);
      if (winner === null) throw identityError(`${keyPath} exists but ${certPath} never appeared; delete ${keyPath} and retry`);
      return winner;
    }
    await link(certTmp, certPath);
  } catch (error) {
    if (error instanceof TunnelError) throw error;
    throw identityError(`cannot write the ${role} identity to ${stateDir}: ${(error as Error).message}`, error);
  } finally {
    await unlink(keyTmp).catch(() => undefined);
    await unlink(certTmp).catch(() => undefined);
  }
  const fingerprint = checkPair(certPem, keyPem, certPath, keyPath);
  return { certPem, keyPem, fingerprint, certPath, keyPath, created: true };
}

async function loadExisting(certPath: string, keyPath: string): Promise<IHubIdentity | null> {
  const keyPem = await readIfExists(keyPath);
  let certPem = await readIfExists(certPath);
  if (keyPem === null && certPem === null) return null;
  if (keyPem !== null && certPem === null) {
    // Another process may be between linking the key and linking the certificate.
    const deadline = Date.now() + CREATION_WAIT_MS;
    while (certPem === null && Date.now() < deadline) {
      await sleep(CREATION_POLL_MS);
      certPem = await readIfExists(certPath);
    }
  }
  if (keyPem === null || certPem === null) {
    const missing = keyPem === null ? keyPath : certPath;
    throw identityError(`${missing} is missing while its pair exists; restore it, or delete both to create a new identity (edges then need new tokens)`);
  }
  // The key must stay private even if something loosened it since creation.
  const mode = (await stat(keyPath)).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    try {
      await chmod(keyPath, 0o600);
    } catch (error) {
      throw identityError(`${keyPath} is readable by others (mode ${mode.toString(8)}) and cannot be restricted to 0600`, error);
    }
  }
  const fingerprint = checkPair(certPem, keyPem, certPath, keyPath);
  return { certPem, keyPem, fingerprint, certPath, keyPath, created: false };
}
