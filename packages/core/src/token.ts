import { TunnelError } from './errors.js';
import { EDGE_ID_PATTERN, MIN_SECRET_LENGTH, describeValue, isValidHost, isValidPort } from './validation.js';

/** Everything an edge needs to reach and trust its hub, in one copy-pasteable string. */
export interface IConnectionToken {
  hubHost: string;
  hubPort: number;
  edgeId: string;
  secret: string;
  /** SHA-256 of the hub's certificate DER, 64 lowercase hex digits. */
  hubFingerprint: string;
}

/**
 * Wire form: base64url (no padding) of compact JSON with short keys, so the token stays short
 * enough for an environment variable or a command line:
 *
 *   { "v": 1, "h": hubHost, "p": hubPort, "e": edgeId, "s": secret, "f": hubFingerprint }
 *
 * `v` lets a later format be told apart; decoders reject versions they do not know.
 */
const TOKEN_VERSION = 1;
const FINGERPRINT_PATTERN = /^[0-9a-f]{64}$/;
const BASE64URL_PATTERN = /^[A-Za-z0-9_-]+$/;

/**
 * Accepts a fingerprint as lowercase/uppercase hex with or without colons (the form
 * `openssl x509 -fingerprint -sha256` prints) and returns 64 lowercase hex digits, or null.
 */
export function normaliseFingerprint(value: unknown): string | null {
  if (typeof value !== 'string') return null;
  const hex = value.replaceAll(':', '').toLowerCase();
  return FINGERPRINT_PATTERN.test(hex) ? hex : null;
}

function invalid(field: string, value: unknown, problem: string, redact = false): TunnelError {
  // A token or secret must not end up in logs, even in part: show only its length.
  const shown = redact ? `<${typeof value === 'string' ? `${value.length} characters` : typeof value}>` : describeValue(value);
  return new TunnelError('ERR_INVALID_TOKEN', `invalid connection token: ${field} = ${shown}: ${problem}`, {
    field,
    value: redact ? undefined : value,
  });
}

function check(read: (key: string) => unknown): IConnectionToken {
  const hubHost = read('hubHost');
  if (!isValidHost(hubHost)) throw invalid('hubHost', hubHost, 'must be a host name or IP address');
  const hubPort = read('hubPort');
  if (!isValidPort(hubPort)) throw invalid('hubPort', hubPort, 'must be an integer from 1 to 65535');
  const edgeId = read('edgeId');
  if (typeof edgeId !== 'string' || !EDGE_ID_PATTERN.test(edgeId)) {
    throw invalid('edgeId', edgeId, 'must be 1-64 characters of A-Z a-z 0-9 . _ -');
  }
  const secret = read('secret');
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw invalid('secret', secret, `must be a string of at least ${MIN_SECRET_LENGTH} characters`, true);
  }
  const rawFingerprint = read('hubFingerprint');
  const hubFingerprint = normaliseFingerprint(rawFingerprint);
  if (hubFingerprint === null) {
    throw invalid('hubFingerprint', rawFingerprint, 'must be 64 hex digits (SHA-256 of the hub certificate)');
  }
  return { hubHost, hubPort, edgeId, secret, hubFingerprint };
}

export function encodeConnectionToken(token: IConnectionToken): string {
  const fields = token as unknown as Record<string, unknown>;
  const valid = check((key) => fields[key]);
  const compact = { v: TOKEN_VERSION, h: valid.hubHost, p: valid.hubPort, e: valid.edgeId, s: valid.secret, f: valid.hubFingerprint };
  return Buffer.from(JSON.stringify(compact), 'utf8').toString('base64url');
}

const SHORT_KEYS: Record<string, string> = { hubHost: 'h', hubPort: 'p', edgeId: 'e', secret: 's', hubFingerprint: 'f' };

export function decodeConnectionToken(token: string): IConnectionToken {
  if (typeof token !== 'string' || token.trim() === '') throw invalid('token', token, 'is empty', true);
  const text = token.trim();
  if (!BASE64URL_PATTERN.test(text)) {
    throw invalid('token', text, 'is not base64url (only A-Z a-z 0-9 - _ are allowed; was it cut or wrapped?)', true);
  }
  const bytes = Buffer.from(text, 'base64url');
  // Buffer silently ignores a dangling final character; re-encoding catches a truncated token.
  if (bytes.toString('base64url') !== text) throw invalid('token', text, 'is not valid base64url (truncated?)', true);
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalid('token', text, 'does not decode to JSON (truncated or not a remoteingress token?)', true);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw invalid('token', text, 'does not decode to a JSON object', true);
  }
  const record = parsed as Record<string, unknown>;
  if (record.v !== TOKEN_VERSION) {
    throw invalid('version', record.v, `unsupported token version (this build reads version ${TOKEN_VERSION})`);
  }
  return check((key) => record[SHORT_KEYS[key] ?? key]);
}
