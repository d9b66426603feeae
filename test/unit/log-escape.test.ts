import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { configureLogging, escapeControls, printDaemonEvents } from '../../packages/core/src/cli.js';

/**
 * Strings from the network (an unauthenticated peer's claimed edge id, a reason a peer sent)
 * reach the daemon's log lines: no control character, line break or bidi override may reach the
 * operator's terminal as it is, in text or JSON lines.
 */
const HOSTILE = 'edge\u001b[2J\u001b]0;pwned\u0007\r\nforged: line\u009b31m\u202etxt.exe\u2028end';

function capture(format: 'text' | 'json', emit: (emitter: EventEmitter) => void): string {
  const written: string[] = [];
  const grab = (chunk: string | Uint8Array): boolean => {
    written.push(String(chunk));
    return true;
  };
  const out = vi.spyOn(process.stdout, 'write').mockImplementation(grab);
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(grab);
  try {
    configureLogging({ format, level: 'debug' });
    const emitter = new EventEmitter();
    printDaemonEvents(emitter, ['authFailed', 'edgeConnected'], false);
    emit(emitter);
  } finally {
    out.mockRestore();
    err.mockRestore();
    configureLogging({ format: 'text', level: 'info' });
  }
  return written.join('');
}

const UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

describe('log lines escape what a peer could use against a terminal', () => {
  afterEach(() => vi.restoreAllMocks());

  it('text lines: one line per record, every control written as \\uXXXX', () => {
    const output = capture('text', (e) => {
      e.emit('authFailed', { remoteAddress: '192.0.2.1', edgeId: HOSTILE, code: 'ERR_AUTH_FAILED', reason: 'bad' });
      e.emit('log', { kind: 'log', level: 'warn', message: `refused ${HOSTILE}` });
    });
    expect(output.split('\n').filter((l) => l !== '')).toHaveLength(2);
    expect(output).not.toMatch(UNSAFE);
    expect(output).toContain('\\u001b[2J');
    expect(output).toContain('\\u202e');
  });

  it('JSON lines: still valid JSON that gives back the same string, with no raw control in it', () => {
    const output = capture('json', (e) => e.emit('authFailed', { remoteAddress: '192.0.2.1', edgeId: HOSTILE, code: 'ERR_AUTH_FAILED' }));
    const lines = output.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toMatch(UNSAFE);
    expect((JSON.parse(lines[0]!) as { edgeId: string }).edgeId).toBe(HOSTILE);
  });

  it('keeps newlines only where asked (our own multi-line messages)', () => {
    expect(escapeControls('a\nb\u001b')).toBe('a\\u000ab\\u001b');
    expect(escapeControls('a\nb\u001b', true)).toBe('a\nb\\u001b');
  });
});
