import { randomBytes, webcrypto } from 'node:crypto';

/**
 * Creates the hub's self-signed identity. Runs in a short-lived child process (see
 * `identity.ts`): @peculiar/x509 and its dependencies cost ~15 MiB of JavaScript heap, and the
 * Node internals they use several more, that a daemon should not keep for the rest of its life
 * after a one-time key generation.
 */

/**
 * Ten years: the certificate is trusted by fingerprint pinning, not by a CA, so expiry would only
 * break edges without making anything safer; rotating means deleting the files and re-issuing tokens.
 */
const CERT_VALIDITY_MS = 10 * 365 * 24 * 60 * 60 * 1000;

export async function generate(): Promise<{ certPem: string; keyPem: string }> {
  // @peculiar/x509 resolves its parts through tsyringe, which needs the Reflect metadata polyfill
  // loaded first; both are imported only here, when an identity is actually created.
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const algorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify']);
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    // A positive 64-bit serial (top bit cleared) as RFC 5280 asks: unique without any registry.
    serialNumber: (randomBytes(8).readUInt8(0) & 0x7f).toString(16).padStart(2, '0') + randomBytes(7).toString('hex'),
    name: 'CN=remoteingress-hub',
    // Backdated one hour so an edge whose clock is slightly behind does not see "not yet valid".
    notBefore: new Date(now - 60 * 60 * 1000),
    notAfter: new Date(now + CERT_VALIDITY_MS),
    signingAlgorithm: algorithm,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'remoteingress-hub' }]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
  return { certPem: cert.toString('pem') + '\n', keyPem };
}


/** Sends the result to the hub and ends once it is delivered (the IPC channel closes). */
function reply(message: object): void {
  process.send?.(message, () => process.disconnect?.());
}

generate().then(
  (identity) => reply({ identity }),
  (error: unknown) => reply({ error: error instanceof Error ? error.message : String(error) }),
);
