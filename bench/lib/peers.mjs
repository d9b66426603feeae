// The targets (iperf3, sockperf and nginx servers) and the peer paths we compare against, each
// started on loopback by the harness, the way ../shared/peers-baseline.sh runs them. Every path
// carries three ports: one to the iperf3 server, one to the sockperf server, one to nginx.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { sleep, startProcess, which } from './proc.mjs';

/** Fixed ports are safe here: the whole run is alone in its own network namespace. */
export const TARGET = { iperf3: 5201, sockperf: 7000, nginx: 8088 };

/** Debian package providing each tool the full run needs (installed when missing, as root). */
export const PACKAGES = {
  iperf3: 'iperf3',
  sockperf: 'sockperf',
  wrk: 'wrk',
  nginx: 'nginx-light',
  stunnel4: 'stunnel4',
  sshd: 'openssh-server',
  ssh: 'openssh-client',
  'kcptun-server': 'kcptun',
  'kcptun-client': 'kcptun',
  socat: 'socat',
  openssl: 'openssl',
  // ss: the wait for iperf3's server to listen anew between runs (iperf3ServerReady).
  ss: 'iproute2',
};

/** Starts iperf3 -s, sockperf sr and nginx (one worker, no keep-alive) on their fixed ports. */
export async function startTargets(dir) {
  const www = join(dir, 'www');
  mkdirSync(www, { recursive: true });
  // nginx's workers run as an unprivileged user; the work directory comes from mkdtemp (0700).
  chmodSync(dir, 0o755);
  writeFileSync(join(www, 'x'), 'ok\n');
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1; daemon off; pid ${dir}/nginx.pid; error_log ${dir}/nginx.err;
events { worker_connections 16384; }
http { access_log off; client_body_temp_path ${dir}/nginx-body; proxy_temp_path ${dir}/nginx-proxy;
  fastcgi_temp_path ${dir}/nginx-fcgi; uwsgi_temp_path ${dir}/nginx-uwsgi; scgi_temp_path ${dir}/nginx-scgi;
  server { listen 127.0.0.1:${TARGET.nginx} reuseport backlog=4096; root ${www}; keepalive_requests 0; } }
`,
  );
  const procs = [
    startProcess('iperf3 -s', 'iperf3', ['-s', '-p', String(TARGET.iperf3), '-B', '127.0.0.1'], { logFile: join(dir, 'iperf3-server.log'), cpu: 'exit' }),
    startProcess('sockperf sr', 'sockperf', ['sr', '--tcp', '-i', '127.0.0.1', '-p', String(TARGET.sockperf)], { logFile: join(dir, 'sockperf-server.log'), cpu: 'exit' }),
    startProcess('nginx', which('nginx'), ['-c', join(dir, 'nginx.conf')], { logFile: join(dir, 'nginx.log'), cpu: 'exit' }),
  ];
  await sleep(500);
  for (const p of procs) if (!p.running) throw new Error(`${p.name} did not start:\n${p.log()}`);
  return procs;
}

const targetsInOrder = [TARGET.iperf3, TARGET.sockperf, TARGET.nginx];

/** Tools each peer path needs; a path whose tools are missing is reported as skipped. */
export const PEER_TOOLS = {
  direct: [],
  'socat relay': ['socat'],
  'stunnel TLS pair': ['stunnel4', 'openssl'],
  'ssh -R aes128-gcm': ['sshd', 'ssh', 'ssh-keygen'],
  kcptun: ['kcptun-server', 'kcptun-client'],
};

/**
 * Starts one peer path. Returns `{ ports: {tput, lat, conn}, pids }`: the three entry ports and
 * the processes whose CPU time the path costs.
 */
export async function startPeer(name, dir) {
  const log = (what) => ({ logFile: join(dir, `${what}.log`) });
  switch (name) {
    case 'direct':
      return { ports: { tput: TARGET.iperf3, lat: TARGET.sockperf, conn: TARGET.nginx }, pids: [] };

    case 'socat relay': {
      const procs = targetsInOrder.map((t, i) =>
        startProcess(`socat ${t}`, 'socat', [`TCP-LISTEN:${6001 + i},bind=127.0.0.1,fork,reuseaddr,backlog=4096`, `TCP:127.0.0.1:${t}`], { ...log(`socat-${t}`), cpu: 'entry' }),
      );
      await sleep(300);
      return { ports: { tput: 6001, lat: 6002, conn: 6003 }, pids: procs.map((p) => p.pid) };
    }

    case 'stunnel TLS pair': {
      // plain → TLS hop → plain: the classic way to wrap a plain TCP service in TLS.
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir, 'stunnel-key.pem'), '-out', join(dir, 'stunnel-cert.pem'), '-days', '2', '-subj', '/CN=localhost'], { stdio: 'ignore' });
      // TIMEOUTclose = 0: do not wait for the peer's close_notify; with the default (60 s) each
      // `Connection: close` request holds its connection open and stunnel manages ~100 conn/s.
      const server = ['foreground = yes', 'pid =', 'TIMEOUTclose = 0', ...targetsInOrder.flatMap((t, i) => [`[s${i}]`, `accept = 127.0.0.1:${6101 + i}`, `connect = 127.0.0.1:${t}`, `cert = ${dir}/stunnel-cert.pem`, `key = ${dir}/stunnel-key.pem`])];
      const client = ['foreground = yes', 'pid =', 'TIMEOUTclose = 0', ...targetsInOrder.flatMap((_, i) => [`[c${i}]`, 'client = yes', `accept = 127.0.0.1:${6111 + i}`, `connect = 127.0.0.1:${6101 + i}`])];
      writeFileSync(join(dir, 'stunnel-server.conf'), server.join('\n') + '\n');
      writeFileSync(join(dir, 'stunnel-client.conf'), client.join('\n') + '\n');
      const s = startProcess('stunnel server', 'stunnel4', [join(dir, 'stunnel-server.conf')], { ...log('stunnel-server'), cpu: 'exit' });
      const c = startProcess('stunnel client', 'stunnel4', [join(dir, 'stunnel-client.conf')], { ...log('stunnel-client'), cpu: 'entry' });
      await sleep(800);
      return { ports: { tput: 6111, lat: 6112, conn: 6113 }, pids: [s.pid, c.pid] };
    }

    case 'ssh -R aes128-gcm': {
      // A private sshd on loopback and a reverse (-R) forward per target, like a user would.
      for (const k of ['ssh-host', 'ssh-user']) execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, k)]);
      writeFileSync(join(dir, 'ssh-authorized'), execFileSync('cat', [join(dir, 'ssh-user.pub')]));
      chmodSync(join(dir, 'ssh-authorized'), 0o600);
      mkdirSync('/run/sshd', { recursive: true });
      const sshd = startProcess('sshd', which('sshd'), ['-D', '-e', '-p', '2222', '-o', 'ListenAddress=127.0.0.1', '-h', join(dir, 'ssh-host'), '-o', `AuthorizedKeysFile=${dir}/ssh-authorized`, '-o', 'StrictModes=no', '-o', 'PidFile=none', '-o', 'MaxStartups=1000', '-o', 'PermitRootLogin=prohibit-password'], { ...log('sshd'), cpu: 'entry' });
      await sleep(800);
      const forwards = targetsInOrder.flatMap((t, i) => ['-R', `127.0.0.1:${6201 + i}:127.0.0.1:${t}`]);
      const user = userInfo().username;
      const ssh = startProcess('ssh -R', 'ssh', ['-N', '-i', join(dir, 'ssh-user'), '-p', '2222', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ExitOnForwardFailure=yes', '-c', 'aes128-gcm@openssh.com', ...forwards, `${user}@127.0.0.1`], { ...log('ssh'), cpu: 'exit' });
      await sleep(1500);
      if (!ssh.running) throw new Error(`ssh -R did not stay up:\n${ssh.log()}\n${sshd.log()}`);
      return { ports: { tput: 6201, lat: 6202, conn: 6203 }, pids: [sshd.pid, ssh.pid] };
    }

    case 'kcptun': {
      // KCP over UDP with tuned windows (fast3, aes-128, no compression).
      const common = ['--mode', 'fast3', '--crypt', 'aes-128', '--key', 'bench', '--sndwnd', '4096', '--rcvwnd', '4096', '--nocomp'];
      const pids = [];
      targetsInOrder.forEach((t, i) => {
        pids.push(startProcess(`kcptun-server ${t}`, 'kcptun-server', ['-t', `127.0.0.1:${t}`, '-l', `127.0.0.1:${6301 + i}`, ...common], { ...log(`kcptun-server-${t}`), cpu: 'exit' }).pid);
        pids.push(startProcess(`kcptun-client ${t}`, 'kcptun-client', ['-r', `127.0.0.1:${6301 + i}`, '-l', `127.0.0.1:${6311 + i}`, ...common], { ...log(`kcptun-client-${t}`), cpu: 'entry' }).pid);
      });
      await sleep(1000);
      return { ports: { tput: 6311, lat: 6312, conn: 6313 }, pids };
    }

    default:
      throw new Error(`unknown peer path ${name}`);
  }
}
