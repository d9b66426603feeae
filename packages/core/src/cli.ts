/**
 * Shared plumbing for the `remoteingress-hub` and `remoteingress-edge` command lines: flag
 * parsing with `util.parseArgs`, environment fallbacks, exit codes, and turning signals into
 * `stop()`. Imported only by bins; library code never exits the process.
 */
import type { EventEmitter } from 'node:events';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { TunnelError, isTunnelError } from './errors.js';
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
    process.stderr.write(`${name}: error: ${message}\nRun "${name} --help" for usage.\n`);
    process.exitCode = EXIT_USAGE;
    return;
  }
  const code = isTunnelError(error) ? ` [${error.code}]` : '';
  process.stderr.write(`${name}: fatal${code}: ${message}\n`);
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

/** A line on stdout. */
export function printLine(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** A line on stderr. */
export function printError(line: string): void {
  process.stderr.write(`${line}\n`);
}

/**
 * Prints a daemon's events as `kind key=value …` lines: `kinds` on stdout, `log` records on
 * stdout (info) or stderr, and per-stream records — every one with `logStreams`, otherwise only
 * failed streams (`streamFailed`), which are always worth a line and the only ones that cost.
 * Listening is what switches the addon's per-stream records on, so nothing else is paid for.
 */
export function printDaemonEvents(emitter: EventEmitter, kinds: readonly string[], logStreams: boolean): void {
  const streamKinds = logStreams ? ['streamOpened', 'streamClosed'] : ['streamFailed'];
  for (const kind of [...kinds, ...streamKinds]) emitter.on(kind, (event: Record<string, unknown>) => printLine(formatEventLine({ ...event })));
  emitter.on('log', (event: { level: string } & Record<string, unknown>) => (event.level === 'info' ? printLine : printError)(formatEventLine({ ...event })));
}
