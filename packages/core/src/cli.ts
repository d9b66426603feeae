/**
 * Shared plumbing for the `remoteingress-hub` and `remoteingress-edge` command lines: flag
 * parsing with `util.parseArgs`, environment fallbacks, exit codes, and turning signals into
 * `stop()`. Imported only by bins; library code never exits the process.
 */
import type { EventEmitter } from 'node:events';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { TunnelError, isTunnelError } from './errors.js';
import { adminUrl, parseAdminListen, type IAdminAddress } from './admin.js';
import { notifyServiceManager } from './systemd.js';
import { isValidPort } from './validation.js';

export type TFlagValues = Record<string, string | boolean | undefined>;
export type TEnv = Record<string, string | undefined>;

/** A long-running command's handle: the bin turns SIGINT/SIGTERM into `stop`, SIGHUP into `reload`. */
export interface IDaemon {
  /** First signal: drain. Resolves once everything is released. */
  stop(): Promise<void>;
  reload?(): void;
}

export interface ICommand {
  /** Shown by `--help`: what it does, every flag, an example. */
  help: string;
  options: NonNullable<ParseArgsConfig['options']>;
  /** Resolves to a daemon for long-running commands, to nothing for one-shot ones. */
  run(values: TFlagValues, env: TEnv): Promise<IDaemon | void>;
}

export interface IProgram {
  name: string;
  /** Runs when the first word is not one of `subcommands`. */
  main: ICommand;
  subcommands?: Record<string, ICommand>;
}

/** Exit codes: 0 done, 1 runtime failure (bind, TLS, addon), 2 bad flags or config, 130 forced by a second signal. */
export const EXIT_RUNTIME_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_FORCED = 130;
/**
 * After a drained stop everything is released, so the event loop should empty immediately;
 * this bounds the wait for a stray handle (a watcher, a socket a listener opened) to 2 s.
 */
const EXIT_AFTER_STOP_MS = 2000;
const USAGE_CODES = new Set(['ERR_USAGE', 'ERR_INVALID_CONFIG', 'ERR_INVALID_TOKEN']);

export function usageError(message: string, field?: string): TunnelError {
  return new TunnelError('ERR_USAGE', message, { field });
}

/** A flag's value, else the environment variable's; empty strings count as absent. */
export function flagOrEnv(values: TFlagValues, flag: string, env: TEnv, envName?: string): string | undefined {
  const value = values[flag];
  if (typeof value === 'string' && value !== '') return value;
  if (envName !== undefined) {
    const fromEnv = env[envName];
    if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  }
  return undefined;
}

/** An environment variable's value; empty counts as absent. */
export function envValue(env: TEnv, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

/** Names the flag, and the environment variable when the value came from there. */
function source(values: TFlagValues, flag: string, envName?: string): string {
  return typeof values[flag] === 'string' && values[flag] !== '' ? `--${flag}` : envName === undefined ? `--${flag}` : envName;
}

export function requireFlag(values: TFlagValues, flag: string, env: TEnv, envName?: string, hint = ''): string {
  const value = flagOrEnv(values, flag, env, envName);
  if (value === undefined) {
    const alternative = envName === undefined ? '' : ` (or set ${envName})`;
    throw usageError(`missing --${flag}${alternative}${hint === '' ? '' : `: ${hint}`}`, flag);
  }
  return value;
}

export function portFlag(values: TFlagValues, flag: string, env: TEnv, envName: string | undefined, options: { allowZero?: boolean } = {}): number | undefined {
  const raw = flagOrEnv(values, flag, env, envName);
  if (raw === undefined) return undefined;
  const port = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!(isValidPort(port) || (options.allowZero === true && port === 0))) {
    const range = options.allowZero === true ? '0 to 65535 (0 picks a free port)' : '1 to 65535';
    throw usageError(`${source(values, flag, envName)} = ${JSON.stringify(raw)}: must be a port number from ${range}`, flag);
  }
  return port;
}

export function integerFlag(values: TFlagValues, flag: string, env: TEnv, envName?: string): number | undefined {
  const raw = flagOrEnv(values, flag, env, envName);
  if (raw === undefined) return undefined;
  const value = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw usageError(`${source(values, flag, envName)} = ${JSON.stringify(raw)}: must be a non-negative integer`, flag);
  }
  return value;
}

/** A boolean flag, also settable with the environment variable set to 1/true/yes. */
export function booleanFlag(values: TFlagValues, flag: string, env: TEnv, envName?: string): boolean {
  if (values[flag] === true) return true;
  if (envName === undefined) return false;
  const raw = env[envName];
  if (raw === undefined || raw === '') return false;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw usageError(`${envName} = ${JSON.stringify(raw)}: must be true or false`, flag);
}

/** Renders an event record as one `kind key=value …` line; values with spaces or quotes are JSON-quoted. */
export function formatEventLine(record: Record<string, unknown>): string {
  const parts = [String(record.kind)];
  for (const [key, value] of Object.entries(record)) {
    if (key === 'kind' || value === undefined) continue;
    parts.push(`${key}=${formatValue(value)}`);
  }
  return parts.join(' ');
}

function formatValue(value: unknown): string {
  if (Array.isArray(value) && value.every((item) => typeof item === 'number' || typeof item === 'string')) {
    return value.join(',');
  }
  if (typeof value === 'object' && value !== null) return JSON.stringify(value);
  const text = String(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

function parse(command: ICommand, argv: string[]): TFlagValues {
  try {
    return parseArgs({ args: argv, options: command.options, strict: true, allowPositionals: false }).values as TFlagValues;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    const message = (error as Error).message;
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const flag = /'([^']+)'/.exec(message)?.[1] ?? message;
      throw usageError(`unknown flag ${flag}`, flag);
    }
    if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const word = /'([^']+)'/.exec(message)?.[1] ?? message;
      throw usageError(`unexpected argument ${JSON.stringify(word)} (flags take the form --name value)`, word);
    }
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw usageError(message);
    throw error;
  }
}

/**
 * Runs a program as a process: dispatches the first word to a subcommand, prints `--help`,
 * maps errors to exit codes, and for a daemon turns the first SIGINT/SIGTERM into a drained
 * `stop()` and a second one into an immediate exit. Only bins call this.
 */
export async function runProgram(program: IProgram, argv: string[], env: TEnv = process.env): Promise<void> {
  const [first, ...rest] = argv;
  const sub = first !== undefined ? program.subcommands?.[first] : undefined;
  const command = sub ?? program.main;
  const args = sub === undefined ? argv : rest;
  const name = sub === undefined ? program.name : `${program.name} ${first}`;

  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(command.help.endsWith('\n') ? command.help : `${command.help}\n`);
    return;
  }

  let daemon: IDaemon | void;
  try {
    daemon = await command.run(parse(command, args), env);
  } catch (error) {
    reportFatal(name, error);
    return;
  }
  if (daemon !== undefined) handleSignals(name, daemon);
}

function reportFatal(name: string, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  if (isTunnelError(error) && USAGE_CODES.has(error.code)) {
    process.stderr.write(`${name}: error: ${escapeControls(message, true)}\nRun "${name} --help" for usage.\n`);
    process.exitCode = EXIT_USAGE;
    return;
  }
  const code = isTunnelError(error) ? ` [${error.code}]` : '';
  process.stderr.write(`${name}: fatal${code}: ${escapeControls(message, true)}\n`);
  process.exitCode = EXIT_RUNTIME_FAILURE;
}

function handleSignals(name: string, daemon: IDaemon): void {
  let stopping = false;
  const onStop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      process.stderr.write(`${name}: received ${signal} again, exiting without waiting for open streams\n`);
      process.exit(EXIT_FORCED);
    }
    stopping = true;
    process.stderr.write(`${name}: received ${signal}, draining open streams (send ${signal} again to exit now)\n`);
    daemon.stop().then(
      () => {
        process.stderr.write(`${name}: stopped\n`);
        exitSoon(0);
      },
      (error: unknown) => {
        reportFatal(name, error);
        exitSoon(EXIT_RUNTIME_FAILURE);
      },
    );
  };
  process.on('SIGINT', onStop);
  process.on('SIGTERM', onStop);
  const { reload } = daemon;
  if (reload !== undefined) process.on('SIGHUP', () => reload.call(daemon));
}

function exitSoon(code: number): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), EXIT_AFTER_STOP_MS).unref();
}

export type TLogFormat = 'text' | 'json';
export type TLogLevel = 'debug' | 'info' | 'warn' | 'error';
const LOG_LEVELS: readonly TLogLevel[] = ['debug', 'info', 'warn', 'error'];
const LOG_FORMATS: readonly TLogFormat[] = ['text', 'json'];
/** Events that report something going wrong print at `warn`; every other event at `info`. */
const WARN_EVENTS = new Set(['authFailed', 'tunnelReplaced', 'edgeDialFailed', 'streamFailed', 'portBindFailed', 'firewallConfigRejected', 'firewallUnavailable', 'eventsDropped', 'crashRecovered', 'serviceLimitReached', 'udpFlowFailed']);

const logging: { format: TLogFormat; level: TLogLevel } = { format: 'text', level: 'info' };

/** How the daemon's lines look (`--log-format`) and which are printed (`--log-level`). */
export function configureLogging(options: { format?: TLogFormat; level?: TLogLevel }): void {
  logging.format = options.format ?? logging.format;
  logging.level = options.level ?? logging.level;
}

/** `--admin-listen`, `--log-format` and `--log-level`, which both daemons take. */
export const OPERATION_OPTIONS = {
  'admin-listen': { type: 'string' },
  'log-format': { type: 'string' },
  'log-level': { type: 'string' },
} as const;

export const OPERATION_HELP = `Operations:
  --admin-listen HOST:PORT  serve /metrics (Prometheus), /healthz, /readyz and /status there;
                         off unless given, no authentication: keep it on loopback  [REMOTEINGRESS_ADMIN_LISTEN]
  --log-format FMT       text (kind key=value lines) or json (one object per line:
                         time, level, message, fields)                    [REMOTEINGRESS_LOG_FORMAT] (default text)
  --log-level LEVEL      debug | info | warn | error                      [REMOTEINGRESS_LOG_LEVEL] (default info)`;

export interface IOperationFlags {
  adminListen: string | undefined;
  logFormat: TLogFormat;
  logLevel: TLogLevel;
}

export function resolveOperationFlags(values: TFlagValues, env: TEnv): IOperationFlags {
  const adminListen = flagOrEnv(values, 'admin-listen', env, 'REMOTEINGRESS_ADMIN_LISTEN');
  if (adminListen !== undefined) {
    try {
      parseAdminListen(adminListen, source(values, 'admin-listen', 'REMOTEINGRESS_ADMIN_LISTEN'));
    } catch (error) {
      throw usageError((error as Error).message, 'admin-listen');
    }
  }
  const format = flagOrEnv(values, 'log-format', env, 'REMOTEINGRESS_LOG_FORMAT') ?? 'text';
  if (!LOG_FORMATS.includes(format as TLogFormat)) {
    throw usageError(`${source(values, 'log-format', 'REMOTEINGRESS_LOG_FORMAT')} = ${JSON.stringify(format)}: must be text or json`, 'log-format');
  }
  const level = flagOrEnv(values, 'log-level', env, 'REMOTEINGRESS_LOG_LEVEL') ?? 'info';
  if (!LOG_LEVELS.includes(level as TLogLevel)) {
    throw usageError(`${source(values, 'log-level', 'REMOTEINGRESS_LOG_LEVEL')} = ${JSON.stringify(level)}: must be debug, info, warn or error`, 'log-level');
  }
  return { adminListen, logFormat: format as TLogFormat, logLevel: level as TLogLevel };
}

function enabled(level: TLogLevel): boolean {
  return LOG_LEVELS.indexOf(level) >= LOG_LEVELS.indexOf(logging.level);
}

/**
 * Characters that must not reach an operator's terminal or log viewer as they are: C0 and C1
 * controls (escape sequences, carriage returns and newlines that forge or hide lines), DEL,
 * the Unicode line and paragraph separators, and the bidirectional overrides and isolates
 * (text shown in another order than it is). An unauthenticated peer's claimed edge id, a
 * reason a peer sent, any string from the network can carry them.
 */
const UNSAFE_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/**
 * `text` with every unsafe character written as a `\uXXXX` escape (the same in text and JSON
 * lines). `keepNewlines`: for our own multi-line messages (a list of config problems), never
 * for a log line, where a newline would start a forged one.
 */
export function escapeControls(text: string, keepNewlines = false): string {
  return text.replace(UNSAFE_CHARACTERS, (c) =>
    keepNewlines && c === '\n' ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** One log line: `text` as given, or a JSON object with time, level, message and the fields. */
function writeRecord(level: TLogLevel, message: string, fields: Record<string, unknown> | undefined, text: string): void {
  if (!enabled(level)) return;
  const stream = level === 'warn' || level === 'error' ? process.stderr : process.stdout;
  if (logging.format === 'text') {
    stream.write(`${escapeControls(text)}\n`);
    return;
  }
  // JSON.stringify escapes C0 controls itself; the rest become JSON's own \uXXXX escapes.
  stream.write(`${escapeControls(JSON.stringify({ time: new Date().toISOString(), level, message, ...fields }))}\n`);
}

/** Where a daemon's admin endpoint listens, if it has one. */
export function printAdminEndpoint(admin: IAdminAddress | null): void {
  if (admin !== null) printLine(`admin endpoint on ${adminUrl(admin)} (/metrics /healthz /readyz /status)`);
}

/** READY=1 to systemd; a failed notification is printed, never fatal. */
export function notifyReady(): void {
  const ready = notifyServiceManager('READY');
  if (ready.error !== undefined) printError(`sd_notify READY failed: ${ready.error.message}`);
}

/** An informational line (stdout). */
export function printLine(line: string): void {
  writeRecord('info', line, undefined, line);
}

/** An error line (stderr). */
export function printError(line: string): void {
  writeRecord('error', line, undefined, line);
}

/**
 * Prints a daemon's events as `kind key=value …` lines (or JSON objects): `kinds`, `log`
 * records at their level, and per-stream records — every one with `logStreams`, otherwise only
 * failed streams (`streamFailed`), which are always worth a line and the only ones that cost.
 * Listening is what switches the addon's per-stream records on, so nothing else is paid for.
 * Problems (`authFailed`, `streamFailed`, …) print at `warn`, on stderr.
 */
export function printDaemonEvents(emitter: EventEmitter, kinds: readonly string[], logStreams: boolean): void {
  const streamKinds = logStreams ? ['streamOpened', 'streamClosed'] : ['streamFailed'];
  for (const kind of [...kinds, ...streamKinds]) {
    emitter.on(kind, (event: Record<string, unknown>) => {
      const level: TLogLevel = WARN_EVENTS.has(kind) ? 'warn' : 'info';
      writeRecord(level, kind, { kind, ...event }, formatEventLine({ ...event }));
    });
  }
  emitter.on('log', (event: { level: string; message: string } & Record<string, unknown>) => {
    const level: TLogLevel = LOG_LEVELS.includes(event.level as TLogLevel) ? (event.level as TLogLevel) : 'info';
    const { kind: _kind, level: _level, message, ...fields } = event;
    writeRecord(level, String(message), fields, formatEventLine({ ...event }));
  });
}

export { statusCommand, renderHubStatus, renderEdgeStatus, formatTable, formatBytes, formatDuration } from './status-command.js';
