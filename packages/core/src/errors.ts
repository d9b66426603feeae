/**
 * Every failure the JavaScript layer reports is a `TunnelError` with a stable `code`, so callers
 * branch on the code and never on message text.
 */
export type TTunnelErrorCode =
  // Raised by the JavaScript layer.
  | 'ERR_INVALID_CONFIG' // an option, allowed edge or environment value is wrong; names field and value
  | 'ERR_INVALID_TOKEN' // a connection token cannot be decoded; names the bad field
  | 'ERR_USAGE' // a command-line flag is unknown, repeated or missing its value
  | 'ERR_ADDON_MISSING' // packages/core/native/remoteingress.node is absent or cannot be loaded
  | 'ERR_IDENTITY' // the hub's certificate/key in the state directory cannot be read or created
  | 'ERR_ADMIN_UNREACHABLE' // `status`: the daemon's admin endpoint did not answer, or not with 200
  // Raised by the native addon (docs/native-api.md) and passed through unchanged.
  | 'ERR_BIND'
  | 'ERR_TLS'
  | 'ERR_STATE'
  | 'ERR_INTERNAL';

/** Codes the addon reports in `tunnelDisconnected`, `edgeDisconnected`, `authFailed` and `streamClosed`. */
export type TDisconnectCode =
  | 'ERR_AUTH_FAILED'
  | 'ERR_FINGERPRINT_MISMATCH'
  | 'ERR_CONNECT'
  | 'ERR_TLS'
  | 'ERR_PROTOCOL'
  | 'ERR_PEER_CLOSED'
  | 'ERR_TIMEOUT'
  | 'ERR_GOAWAY'
  | 'ERR_TARGET_UNREACHABLE'
  | (string & {});

const NATIVE_CODES: ReadonlySet<string> = new Set(['ERR_INVALID_CONFIG', 'ERR_BIND', 'ERR_TLS', 'ERR_STATE', 'ERR_INTERNAL']);

export interface ITunnelErrorDetails {
  /** Dotted path of the offending field, e.g. `allowedEdges[0].listenPorts[1].port`. */
  field?: string;
  /** The offending value as it was given. */
  value?: unknown;
  /** Every problem found, when validation reports more than one. */
  issues?: readonly IConfigIssue[];
  cause?: unknown;
}

export interface IConfigIssue {
  field: string;
  value: unknown;
  message: string;
}

export class TunnelError extends Error {
  readonly code: TTunnelErrorCode;
  readonly field: string | undefined;
  readonly value: unknown;
  readonly issues: readonly IConfigIssue[];

  constructor(code: TTunnelErrorCode, message: string, details: ITunnelErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'TunnelError';
    this.code = code;
    this.field = details.field;
    this.value = details.value;
    this.issues = details.issues ?? [];
  }

  /**
   * Wraps an error thrown or rejected by the addon. The addon already sets one of the documented
   * codes; anything else (a code we do not know, or none) is an internal failure, kept as `cause`.
   */
  static fromNative(error: unknown, operation: string): TunnelError {
    if (error instanceof TunnelError) return error;
    const code = (error as { code?: unknown } | null)?.code;
    const message = error instanceof Error ? error.message : String(error);
    if (typeof code === 'string' && NATIVE_CODES.has(code)) {
      return new TunnelError(code as TTunnelErrorCode, `${operation}: ${message}`, { cause: error });
    }
    return new TunnelError('ERR_INTERNAL', `${operation} failed unexpectedly: ${message}`, { cause: error });
  }
}

export function isTunnelError(error: unknown, code?: TTunnelErrorCode): error is TunnelError {
  return error instanceof TunnelError && (code === undefined || error.code === code);
}
