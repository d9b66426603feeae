import { describe, expect, it } from 'vitest';
import { TunnelError, decodeConnectionToken, encodeConnectionToken, type IConnectionToken } from '../../packages/core/src/index.js';

const FINGERPRINT = 'ab'.repeat(32);
const good: IConnectionToken = {
  hubHost: 'hub.example.com',
  hubPort: 8443,
  edgeId: 'edge-1',
  secret: 'a-secret-of-24-characters',
  hubFingerprint: FINGERPRINT,
};

function encodeRaw(value: unknown): string {
  return Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
}

function decodeError(token: string): TunnelError {
  try {
    decodeConnectionToken(token);
  } catch (error) {
    expect(error).toBeInstanceOf(TunnelError);
    expect((error as TunnelError).code).toBe('ERR_INVALID_TOKEN');
    return error as TunnelError;
  }
  throw new Error('expected decoding to fail');
}

describe('connection tokens', () => {
  it('round-trips and is base64url of compact JSON', () => {
    const token = encodeConnectionToken(good);
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(JSON.parse(Buffer.from(token, 'base64url').toString('utf8'))).toEqual({
      v: 1,
      h: good.hubHost,
      p: good.hubPort,
      e: good.edgeId,
      s: good.secret,
      f: FINGERPRINT,
    });
    expect(decodeConnectionToken(token)).toEqual(good);
  });

  it('normalises an uppercase, colon-separated fingerprint', () => {
    const colons = FINGERPRINT.toUpperCase().match(/../g)!.join(':');
    expect(decodeConnectionToken(encodeConnectionToken({ ...good, hubFingerprint: colons })).hubFingerprint).toBe(FINGERPRINT);
  });

  it('tolerates surrounding whitespace from copy and paste', () => {
    expect(decodeConnectionToken(`  ${encodeConnectionToken(good)}\n`)).toEqual(good);
  });

  it('rejects a token that is not base64url', () => {
    const error = decodeError(`${encodeConnectionToken(good)}==`);
    expect(error.field).toBe('token');
    expect(error.message).toMatch(/base64url/);
  });

  it('rejects a truncated token', () => {
    const token = encodeConnectionToken(good);
    for (const cut of [1, 5, 20]) expect(decodeError(token.slice(0, token.length - cut)).field).toBe('token');
  });

  it('rejects a tampered token, and never echoes the token or secret', () => {
    const token = encodeConnectionToken(good);
    const tampered = `${token.slice(0, 10)}${token[10] === 'A' ? 'B' : 'A'}${token.slice(11)}`;
    let message = '';
    try {
      const decoded = decodeConnectionToken(tampered);
      // A flip that still decodes must at least change the content the hub will check.
      expect(decoded).not.toEqual(good);
    } catch (error) {
      expect((error as TunnelError).code).toBe('ERR_INVALID_TOKEN');
      message = (error as Error).message;
    }
    expect(message).not.toContain(good.secret);
    expect(decodeError('not a token!').message).not.toContain('not a token!');
  });

  it('rejects JSON that is not an object, and unknown versions', () => {
    expect(decodeError(Buffer.from('not json').toString('base64url')).message).toMatch(/JSON/);
    expect(decodeError(encodeRaw([1, 2])).message).toMatch(/object/);
    expect(decodeError(encodeRaw({ v: 2, h: 'x' })).field).toBe('version');
  });

  const compact = { v: 1, h: good.hubHost, p: good.hubPort, e: good.edgeId, s: good.secret, f: FINGERPRINT };
  it.each([
    ['hubHost', { h: undefined }],
    ['hubHost', { h: '' }],
    ['hubHost', { h: 'bad host' }],
    ['hubPort', { p: undefined }],
    ['hubPort', { p: 0 }],
    ['hubPort', { p: 70000 }],
    ['hubPort', { p: '8443' }],
    ['edgeId', { e: undefined }],
    ['edgeId', { e: 'has space' }],
    ['secret', { s: undefined }],
    ['secret', { s: 'short' }],
    ['hubFingerprint', { f: undefined }],
    ['hubFingerprint', { f: 'abc' }],
    ['hubFingerprint', { f: 'zz'.repeat(32) }],
  ])('names the bad field %s (%o)', (field, patch) => {
    const error = decodeError(encodeRaw({ ...compact, ...patch }));
    expect(error.field).toBe(field);
    expect(error.message).toContain(field);
    if (field === 'secret') expect(error.message).not.toContain('short');
  });

  it('refuses to encode invalid fields', () => {
    expect(() => encodeConnectionToken({ ...good, hubPort: 0 })).toThrow(/hubPort/);
    expect(() => encodeConnectionToken({ ...good, hubFingerprint: 'nope' })).toThrow(/hubFingerprint/);
  });
});
