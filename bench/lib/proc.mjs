// Child processes for the benchmark: started with their output in a log file (never a pipe, so a
// chatty daemon can never block on a full pipe while we are busy measuring), stopped by pid, and
// read through /proc for CPU time and resident memory.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import { delimiter, join } from 'node:path';

/** Clock ticks per second for /proc/<pid>/stat times; 100 on every Linux we run on, asked once. */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** A TCP port on 127.0.0.1 that was free a moment ago (the OS's pick; closed again at once). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address();
  await new Promise((done) => server.close(done));
  return port;
}

export function sleep(ms) {
  return new Promise((done) => setTimeout(done, ms));
}

/** Absolute path of an executable on PATH (or the sbin directories), or null. */
export function which(bin) {
  if (bin.includes('/')) return existsSync(bin) ? bin : null;
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    const candidate = join(dir, bin);
    if (dir !== '' && existsSync(candidate)) return candidate;
  }
  return null;
}

/**
 * Where each process of a path runs. On a 2-CPU machine a relay path has four busy processes
 * (load generator → entry relay → exit relay → server) and the kernel's placement of them flips
 * from run to run between layouts that differ by ~1.5× in throughput, for every relay alike
 * (ours 17.6–19 Gbit/s with each hop crossing CPUs, 26–30 with each pair sharing one; ssh -R
 * 13.4–19.3). `--cpu-layout pinned` runs every path in one layout — the load generator and the
 * path's entry process on CPU 0, its exit process and the servers on CPU 1 — for steady A/B
 * numbers. It is not the default: it also changes what the peers measure (ssh -R's new
 * connections/s went from ~4k to ~20k), and the targets were set on unpinned numbers.
 */
export const cpuLayout = { pinned: false };

/** `[cmd, args]` that runs `cmd args…` on the CPU of `side` ('entry' | 'exit') when pinned. */
export function onCpu(side, cmd, args) {
  if (!cpuLayout.pinned || side === undefined) return [cmd, args];
  return ['taskset', ['-c', side === 'entry' ? '0' : '1', cmd, ...args]];
}

/** Every process we started, so one cleanup can stop them all by pid. */
const started = new Set();

/**
 * Starts `cmd args…` with stdout and stderr appended to `logFile`. Returns a handle with the
 * pid, the log text, `waitFor(regex)` over that log, `exited` and `stop()`.
 * `cpu` ('entry' | 'exit') pins it as `cpuLayout` says.
 */
export function startProcess(name, cmd, args, { logFile, env, cwd, cpu } = {}) {
  const fd = openSync(logFile, 'a');
  // taskset execs the command: the pid is the command's own.
  const [file, argv] = onCpu(cpu, cmd, args);
  const child = spawn(file, argv, { stdio: ['ignore', fd, fd], env: env ?? process.env, cwd });
  closeSync(fd);
  let exitInfo = null;
  const exited = new Promise((done) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      started.delete(handle);
      done(exitInfo);
    });
    child.once('error', (error) => {
      exitInfo = { code: null, signal: null, error: error.message };
      started.delete(handle);
      done(exitInfo);
    });
  });
  const log = () => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const handle = {
    name,
    child,
    pid: child.pid,
    logFile,
    log,
    exited,
    get running() {
      return exitInfo === null;
    },
    /** Resolves with the first match of `pattern` in the log; rejects on exit or timeout. */
    async waitFor(pattern, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const match = pattern.exec(log());
        if (match !== null) return match;
        if (exitInfo !== null) throw new Error(`${name} exited (${exitInfo.code ?? exitInfo.signal ?? exitInfo.error}) before printing ${pattern}\n${tail(log())}`);
        if (Date.now() > deadline) throw new Error(`${name}: no ${pattern} within ${timeoutMs} ms\n${tail(log())}`);
        await sleep(50);
      }
    },
    /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
    async stop(graceMs = 2_000) {
      if (exitInfo !== null) return exitInfo;
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const timer = setTimeout(() => {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, graceMs);
      const info = await exited;
      clearTimeout(timer);
      return info;
    },
  };
  started.add(handle);
  return handle;
}

/** Stops every process started through `startProcess`, newest first. */
export async function stopAll() {
  const handles = [...started].reverse();
  await Promise.all(handles.map((h) => h.stop(1_000)));
}

/** Kills everything synchronously (for `process.on('exit')`, where nothing async runs). */
export function killAllSync() {
  for (const h of started) {
    try {
      process.kill(h.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

function tail(text, lines = 15) {
  return text.split('\n').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------
// /proc readers

/** Fields of /proc/<pid>/stat after the command name (field 3 onwards), or null if gone. */
function statFields(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/**
 * CPU seconds (user + system) of this process's children that have exited and been waited for
 * (`cutime` + `cstime` of /proc/self/stat): how the bench reads the CPU of a load generator it
 * ran to completion, such as one iperf3 client, which is gone before anyone could read its own
 * /proc entry.
 */
export function reapedChildrenCpuSeconds() {
  const f = statFields('self');
  return f === null ? 0 : (Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/**
 * CPU seconds (user + system) of each thread of `roots` and their descendants: Map(tid →
 * seconds). Unlike `cpuSeconds`, a thread that has exited is not counted: read it while the
 * threads measured are alive.
 */
export function threadCpuSeconds(roots) {
  const out = new Map();
  for (const root of roots) {
    for (const pid of processTree(root)) {
      let tids = [];
      try {
        tids = readdirSync(`/proc/${pid}/task`);
      } catch {
        continue; // exited meanwhile
      }
      for (const tid of tids) {
        const f = statFields(`${pid}/task/${tid}`);
        if (f !== null) out.set(tid, (Number(f[11]) + Number(f[12])) / CLK_TCK);
      }
    }
  }
  return out;
}

/** The command name of a process (/proc/<pid>/comm), or null if it is gone. */
export function processName(pid) {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Parent pid of every live process, read once. */
function parentMap() {
  const parents = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(entry);
    if (fields !== null) parents.set(Number(entry), Number(fields[1]));
  }
  return parents;
}

/** `root` and all its live descendants. */
export function processTree(root) {
  const parents = parentMap();
  const tree = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, ppid] of parents) {
      if (!tree.has(pid) && tree.has(ppid)) {
        tree.add(pid);
        grew = true;
      }
    }
  }
  return [...tree].filter((pid) => parents.has(pid));
}

/**
 * CPU seconds (user + system) used so far by the process trees under `roots`: each live process's
 * own time plus the time of children it has already reaped (cutime/cstime), so short-lived
 * per-connection children (socat's forks) are counted too, and nothing twice.
 */
export function cpuSeconds(roots) {
  let ticks = 0;
  for (const root of roots) {
    for (const pid of processTree(root)) {
      const f = statFields(pid);
      // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
      if (f !== null) ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    }
  }
  return ticks / CLK_TCK;
}

/** VmRSS of one process in KiB, or null if it is gone. */
export function rssKiB(pid) {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match === null ? null : Number(match[1]);
  } catch {
    return null;
  }
}
