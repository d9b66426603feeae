// Holds many idle TCP connections for the per-connection memory measurement. Two roles, each a
// separate process so neither needs more than ~10,000 file descriptors:
//   node bench/idle-conns.mjs serve PORT         accept and hold connections (the tunnel's target)
//   node bench/idle-conns.mjs open PORT COUNT    open COUNT connections to PORT and hold them
// Driven over the IPC channel (`fork`): the parent sends {cmd:'count'} / {cmd:'close'} and gets
// {count} / {opened, failed, ms} / {closed} back.
import net from 'node:net';

/** Connections opened at once: enough to be quick, few enough not to overflow the edge's accept backlog. */
const OPEN_CONCURRENCY = 256;

const [role, portText, countText] = process.argv.slice(2);
const port = Number(portText);
const sockets = new Set();
const send = (message) => process.send?.(message);

function hold(socket) {
  sockets.add(socket);
  socket.on('error', () => {});
  socket.on('close', () => sockets.delete(socket));
}

if (role === 'serve') {
  const server = net.createServer({ pauseOnConnect: true }, hold);
  server.on('error', (error) => {
    process.stderr.write(`${error.message}\n`);
    process.exit(1);
  });
  server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => send({ listening: port }));
} else if (role === 'open') {
  const count = Number(countText);
  const started = Date.now();
  let next = 0;
  let failed = 0;
  /** error code → count, so a short count says why (refused, reset, timed out…). */
  const failures = {};
  const openOne = () =>
    new Promise((done) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        hold(socket);
        socket.pause();
        done();
      });
      socket.once('error', (error) => {
        failed += 1;
        failures[error.code ?? error.message] = (failures[error.code ?? error.message] ?? 0) + 1;
        done();
      });
    });
  await Promise.all(
    Array.from({ length: OPEN_CONCURRENCY }, async () => {
      while (next < count) {
        next += 1;
        await openOne();
      }
    }),
  );
  send({ opened: sockets.size, failed, failures, ms: Date.now() - started });
} else {
  process.stderr.write('usage: idle-conns.mjs serve PORT | open PORT COUNT\n');
  process.exit(2);
}

process.on('message', (message) => {
  if (message.cmd === 'count') send({ count: sockets.size });
  if (message.cmd === 'close') {
    for (const s of sockets) s.destroy();
    send({ closed: true });
    setTimeout(() => process.exit(0), 100);
  }
});
