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

/** The names one kind of token gives its fields, for messages. */
interface ITokenKind {
  label: string;
  host: string;
  port: string;
  fingerprint: string;
  /** Whose certificate the fingerprint is of. */
  whose: string;
}
const CONNECTION_TOKEN: ITokenKind = { label: 'connection token', host: 'hubHost', port: 'hubPort', fingerprint: 'hubFingerprint', whose: 'the hub' };
const EDGE_TOKEN: ITokenKind = { label: 'edge token', host: 'edgeHost', port: 'edgePort', fingerprint: 'edgeFingerprint', whose: 'the edge' };

function invalid(field: string, value: unknown, problem: string, redact = false, kind: ITokenKind = CONNECTION_TOKEN): TunnelError {
  // A token or secret must not end up in logs, even in part: show only its length.
  const shown = redact ? `<${typeof value === 'string' ? `${value.length} characters` : typeof value}>` : describeValue(value);
  return new TunnelError('ERR_INVALID_TOKEN', `invalid ${kind.label}: ${field} = ${shown}: ${problem}`, {
    field,
    value: redact ? undefined : value,
  });
}

/** Checks the fields every token has; `read` takes the kind's field names. */
function checkFields(read: (key: string) => unknown, kind: ITokenKind): { host: string; port: number; edgeId: string; secret: string; fingerprint: string } {
  const host = read(kind.host);
  if (!isValidHost(host)) throw invalid(kind.host, host, 'must be a host name or IP address', false, kind);
  const port = read(kind.port);
  if (!isValidPort(port)) throw invalid(kind.port, port, 'must be an integer from 1 to 65535', false, kind);
  const edgeId = read('edgeId');
  if (typeof edgeId !== 'string' || !EDGE_ID_PATTERN.test(edgeId)) {
    throw invalid('edgeId', edgeId, 'must be 1-64 characters of A-Z a-z 0-9 . _ -', false, kind);
  }
  const secret = read('secret');
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw invalid('secret', secret, `must be a string of at least ${MIN_SECRET_LENGTH} characters`, true, kind);
  }
  const rawFingerprint = read(kind.fingerprint);
  const fingerprint = normaliseFingerprint(rawFingerprint);
  if (fingerprint === null) {
    throw invalid(kind.fingerprint, rawFingerprint, `must be 64 hex digits (SHA-256 of ${kind.whose}'s certificate)`, false, kind);
  }
  return { host, port, edgeId, secret, fingerprint };
}

function check(read: (key: string) => unknown): IConnectionToken {
  const t = checkFields(read, CONNECTION_TOKEN);
  return { hubHost: t.host, hubPort: t.port, edgeId: t.edgeId, secret: t.secret, hubFingerprint: t.fingerprint };
}

export function encodeConnectionToken(token: IConnectionToken): string {
  const fields = token as unknown as Record<string, unknown>;
  const valid = check((key) => fields[key]);
  const compact = { v: TOKEN_VERSION, h: valid.hubHost, p: valid.hubPort, e: valid.edgeId, s: valid.secret, f: valid.hubFingerprint };
  return Buffer.from(JSON.stringify(compact), 'utf8').toString('base64url');
}

const SHORT_KEYS: Record<string, string> = { hubHost: 'h', hubPort: 'p', edgeId: 'e', secret: 's', hubFingerprint: 'f' };

/** The token's JSON object, checked for form only (base64url, JSON, an object). */
function decodeTokenObject(token: string): Record<string, unknown> {
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
  return record;
}

export function decodeConnectionToken(token: string): IConnectionToken {
  const record = decodeTokenObject(token);
  if (record.k === EDGE_TOKEN_KIND) {
    throw invalid('token', undefined, 'is an edge token (from "remoteingress-edge token"): it goes into the hub\'s allowed edge as "edgeToken", not to an edge', true);
  }
  return check((key) => record[SHORT_KEYS[key] ?? key]);
}

/**
 * What a hub needs to dial an edge that listens for it (`remoteingress-edge --listen-for-hub`),
 * in one string for the allowed edge's `edgeToken`: where the edge listens, its id and secret,
 * and its certificate's fingerprint, which the hub pins.
 */
export interface IEdgeToken {
  edgeHost: string;
  edgePort: number;
  edgeId: string;
  secret: string;
  /** SHA-256 of the edge's certificate DER, 64 lowercase hex digits. */
  edgeFingerprint: string;
}

/**
 * Wire form: like the connection token, with `"k": "edge"` so neither kind can be used where
 * the other belongs: `{ "v": 1, "k": "edge", "h", "p", "e", "s", "f" }`.
 */
const EDGE_TOKEN_KIND = 'edge';

function checkEdgeToken(read: (key: string) => unknown): IEdgeToken {
  const t = checkFields(read, EDGE_TOKEN);
  return { edgeHost: t.host, edgePort: t.port, edgeId: t.edgeId, secret: t.secret, edgeFingerprint: t.fingerprint };
}

export function encodeEdgeToken(token: IEdgeToken): string {
  const fields = token as unknown as Record<string, unknown>;
  const t = checkEdgeToken((key) => fields[key]);
  const compact = { v: TOKEN_VERSION, k: EDGE_TOKEN_KIND, h: t.edgeHost, p: t.edgePort, e: t.edgeId, s: t.secret, f: t.edgeFingerprint };
  return Buffer.from(JSON.stringify(compact), 'utf8').toString('base64url');
}

const EDGE_SHORT_KEYS: Record<string, string> = { edgeHost: 'h', edgePort: 'p', edgeId: 'e', secret: 's', edgeFingerprint: 'f' };

export function decodeEdgeToken(token: string): IEdgeToken {
  const record = decodeTokenObject(token);
  if (record.k !== EDGE_TOKEN_KIND) {
    throw new TunnelError(
      'ERR_INVALID_TOKEN',
      'invalid edge token: this is a connection token for an edge (from "remoteingress-hub token"); edgeToken takes the token "remoteingress-edge token" prints',
      { field: 'edgeToken' },
    );
  }
  return checkEdgeToken((key) => record[EDGE_SHORT_KEYS[key] ?? key]);
}
