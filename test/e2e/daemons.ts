import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { CONNECT_TIMEOUT_MS, type Cleanups, withTimeout } from './helpers.js';

/** The daemons as a user runs them: the dist/bin.js of each package, in child processes. */

/** The test's own environment without any REMOTEINGRESS_* variable that could change what the CLIs do. */
export function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('REMOTEINGRESS_')));
}

export interface IDaemonProcess {
  child: ChildProcess;
  output: () => string;
  waitForLine(pattern: RegExp, what: string): Promise<RegExpExecArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function spawnDaemon(cleanups: Cleanups, bin: string, args: string[], env: NodeJS.ProcessEnv = {}): IDaemonProcess {
  return spawnProcess(cleanups, process.execPath, [bin, ...args], { env: { ...cleanEnv(), ...env } });
}

/**
 * Any long-running command, its output collected for `waitForLine`, stopped by `cleanups` with
 * `stopSignal` (default SIGKILL; a wrapper such as npx needs SIGTERM, which it passes on to
 * the daemon it started, where SIGKILL would orphan it).
 */
export function spawnProcess(
  cleanups: Cleanups,
  command: string,
  argv: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; stopSignal?: NodeJS.Signals } = {},
): IDaemonProcess {
  const child = spawn(command, argv, { env: options.env ?? cleanEnv(), cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiters: Array<{ pattern: RegExp; done: (match: RegExpExecArray) => void }> = [];
  const check = (): void => {
    for (const waiter of [...waiters]) {
      const match = waiter.pattern.exec(stdout);
      if (match !== null) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.done(match);
      }
    }
  };
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    check();
  });
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.once('exit', (code, signal) => done({ code, signal })));
  cleanups.add(`kill ${argv[0] ?? command}`, async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(options.stopSignal ?? 'SIGKILL');
      await exited;
    }
  });
  const output = (): string => `--- stdout\n${stdout}--- stderr\n${stderr}`;
  return {
    child,
    output,
    exited,
    waitForLine(pattern, what) {
      const waiting = new Promise<RegExpExecArray>((done, reject) => {
        waiters.push({ pattern, done });
        check();
        void exited.then(({ code, signal }) => reject(new Error(`${what}: the process exited (${code ?? signal}) first\n${output()}`)));
      });
      return withTimeout(waiting, CONNECT_TIMEOUT_MS, () => `${what}\n${output()}`);
    },
  };
}

export function runOnce(bin: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [bin, ...args], { env: { ...cleanEnv(), ...env }, timeout: 20_000 }, (error, stdout, stderr) => {
      done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

