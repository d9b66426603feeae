import { X509Certificate, createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HUB_CERT_FILE, HUB_KEY_FILE, TunnelError, loadOrCreateHubIdentity } from '../../packages/core/src/index.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'ri-identity-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('hub identity', () => {
  it('creates a P-256 key (PKCS#8, 0600) and a self-signed certificate in a 0700 directory', async () => {
    const stateDir = join(root, 'state', 'nested');
    const identity = await loadOrCreateHubIdentity(stateDir);
    expect(identity.created).toBe(true);
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(stateDir, HUB_KEY_FILE))).mode & 0o777).toBe(0o600);

    const keyPem = await readFile(join(stateDir, HUB_KEY_FILE), 'utf8');
    expect(keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    const certPem = await readFile(join(stateDir, HUB_CERT_FILE), 'utf8');
    const cert = new X509Certificate(certPem);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.ca).toBe(false);
    expect(new Date(cert.validTo).getTime()).toBeGreaterThan(Date.now() + 365 * 24 * 3600 * 1000);

    expect(identity.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(identity.fingerprint).toBe(createHash('sha256').update(cert.raw).digest('hex'));
    expect(identity.fingerprint).toBe(cert.fingerprint256.replaceAll(':', '').toLowerCase());
  });

  it('reuses the identity afterwards: same files, same fingerprint', async () => {
    const first = await loadOrCreateHubIdentity(root);
    const second = await loadOrCreateHubIdentity(root);
    expect(second.created).toBe(false);
    expect(second.fingerprint).toBe(first.fingerprint);
    expect(second.certPem).toBe(first.certPem);
    expect(second.keyPem).toBe(first.keyPem);
  });

  it('creates exactly one identity when two starts race', async () => {
    const results = await Promise.all([loadOrCreateHubIdentity(root), loadOrCreateHubIdentity(root), loadOrCreateHubIdentity(root)]);
    expect(new Set(results.map((result) => result.fingerprint)).size).toBe(1);
    expect(results.filter((result) => result.created)).toHaveLength(1);
  });

  it('tightens a key file that became readable by others', async () => {
    await loadOrCreateHubIdentity(root);
    await chmod(join(root, HUB_KEY_FILE), 0o644);
    await loadOrCreateHubIdentity(root);
    expect((await stat(join(root, HUB_KEY_FILE))).mode & 0o777).toBe(0o600);
  });

  it('refuses a half identity and a mismatched pair with ERR_IDENTITY', async () => {
    const other = await mkdtemp(join(tmpdir(), 'ri-identity-other-'));
    try {
      await loadOrCreateHubIdentity(root);
      await loadOrCreateHubIdentity(other);
      await writeFile(join(root, HUB_KEY_FILE), await readFile(join(other, HUB_KEY_FILE)));
      await expect(loadOrCreateHubIdentity(root)).rejects.toMatchObject({ code: 'ERR_IDENTITY', message: /does not belong/ });

      await rm(join(root, HUB_KEY_FILE));
      const error = await loadOrCreateHubIdentity(root).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(TunnelError);
      expect(error).toMatchObject({ code: 'ERR_IDENTITY', message: /hub-key\.pem is missing/ });
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
});
