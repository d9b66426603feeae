import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';

/**
 * The hub and edge classes against a recording fake of the addon (docs/native-api.md): these
 * tests check the JavaScript side's contract (validation before any native call, whole-update
 * rejection, idempotent stop, event dispatch) and need no built addon.
 */
const calls: Array<{ name: string; args: unknown[] }> = [];
let emit: (batch: string) => void = () => undefined;
let edgesJson: string | undefined;
const fingerprintHolder = { value: '' };

const fakeAddon = {
  version: () => '0.0.0-fake',
  createHub(onEvents: (batch: string) => void) {
    emit = onEvents;
    calls.push({ name: 'createHub', args: [] });
    return {};
  },
  async hubStart(_handle: object, optionsJson: string) {
    calls.push({ name: 'hubStart', args: [JSON.parse(optionsJson)] });
    return JSON.stringify({ tunnelPort: 43127, fingerprint: fingerprintHolder.value });
  },
  async hubSetEdges(_handle: object, json: string) {
    calls.push({ name: 'hubSetEdges', args: [JSON.parse(json)] });
    edgesJson = json;
    return JSON.stringify({ generation: calls.filter((call) => call.name === 'hubSetEdges').length });
  },
  hubStatus() {
    return JSON.stringify({ running: true, tunnelPort: 43127, fingerprint: fingerprintHolder.value, allowedEdges: JSON.parse(edgesJson ?? '[]').length, edges: [] });
  },
  async hubStop(_handle: object, graceMs: number) {
    calls.push({ name: 'hubStop', args: [graceMs] });
  },
  createEdge(onEvents: (batch: string) => void) {
    emit = onEvents;
    calls.push({ name: 'createEdge', args: [] });
    return {};
  },
  async edgeStart(_handle: object, optionsJson: string) {
    calls.push({ name: 'edgeStart', args: [JSON.parse(optionsJson)] });
  },
  edgeStatus() {
    return JSON.stringify({ state: 'connecting', hubAddress: '127.0.0.1:43127', transport: null, connectedSince: null, attempts: 1, lastError: null, rttMs: null, ports: { tcp: [], udp: [] }, openStreams: 0, bytesIn: 0, bytesOut: 0 });
  },
  async edgeStop(_handle: object, graceMs: number) {
    calls.push({ name: 'edgeStop', args: [graceMs] });
  },
};

vi.mock('remoteingress-core', async (importOriginal) => {
  const original = await importOriginal<typeof import('remoteingress-core')>();
  return { ...original, loadNativeAddon: () => fakeAddon };
});

const { RemoteIngressHub } = await import('../../packages/hub/src/index.js');
const { RemoteIngressEdge } = await import('../../packages/edge/src/index.js');
const { encodeConnectionToken, loadOrCreateHubIdentity } = await import('remoteingress-core');

const SECRET = 'edge-secret-0123456789';
let stateDir: string;

beforeAll(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'ri-classes-'));
  fingerprintHolder.value = (await loadOrCreateHubIdentity(stateDir)).fingerprint;
});
afterAll(async () => {
  await rm(stateDir, { recursive: true, force: true });
});
beforeEach(() => {
  calls.length = 0;
  edgesJson = undefined;
});

describe('RemoteIngressHub', () => {
  it('starts with its identity, applies the normalised edges, and stops idempotently', async () => {
    const hub = new RemoteIngressHub();
    const started = await hub.start({ tunnelPort: 0, stateDir, targetHost: '10.1.2.3', allowedEdges: [{ id: 'e1', secret: SECRET, listenPorts: [80] }] });
    expect(started).toEqual({ tunnelPort: 43127, fingerprint: fingerprintHolder.value });
    expect(hub.fingerprint).toBe(fingerprintHolder.value);
    const startOptions = calls.find((call) => call.name === 'hubStart')?.args[0] as Record<string, unknown>;
    expect(startOptions).toMatchObject({ tunnelPort: 0, bindHost: '0.0.0.0' });
    expect(String(startOptions.keyPem)).toMatch(/BEGIN PRIVATE KEY/);
    expect(calls.find((call) => call.name === 'hubSetEdges')?.args[0]).toEqual([
      { id: 'e1', secret: SECRET, bindAddress: null, tcp: [{ port: 80, targetHost: '10.1.2.3', targetPort: 80, proxyProtocol: 'v1' }], udp: [], firewall: null, stunIntervalSecs: null, stunServers: [] },
    ]);
    expect(hub.getStatus()).toMatchObject({ running: true, allowedEdges: 1 });

    const first = hub.stop({ graceMs: 250 });
    const second = hub.stop();
    expect(second).toBe(first);
    await first;
    expect(calls.filter((call) => call.name === 'hubStop')).toEqual([{ name: 'hubStop', args: [250] }]);
    expect(hub.getStatus().running).toBe(false);
    await expect(hub.start({ tunnelPort: 0, stateDir })).rejects.toMatchObject({ code: 'ERR_STATE' });
  });

  it('rejects an invalid update whole, naming edge, field and value, and keeps the old set', async () => {
    const hub = new RemoteIngressHub();
    await hub.start({ tunnelPort: 0, stateDir, allowedEdges: [{ id: 'e1', secret: SECRET, listenPorts: [80] }] });
    const before = edgesJson;
    const update = hub.updateAllowedEdges([
      { id: 'e1', secret: SECRET, listenPorts: [80, 81] },
      { id: 'e2', secret: SECRET, listenPorts: [0] },
    ]);
    await expect(update).rejects.toMatchObject({ code: 'ERR_INVALID_CONFIG', field: 'allowedEdges[1].listenPorts[0]', message: expect.stringMatching(/edge "e2" listenPorts\[0\] = 0/) });
    expect(edgesJson).toBe(before);
    expect(calls.filter((call) => call.name === 'hubSetEdges')).toHaveLength(1);

    await hub.updateAllowedEdges([{ id: 'e1', secret: SECRET, listenPorts: [80, 81] }]);
    expect(JSON.parse(edgesJson ?? '[]')[0].tcp.map((port: { port: number }) => port.port)).toEqual([80, 81]);
    await hub.stop({ graceMs: 0 });
    await expect(hub.updateAllowedEdges([])).rejects.toMatchObject({ code: 'ERR_STATE' });
  });

  it('validates start options before touching the addon', async () => {
    const hub = new RemoteIngressHub();
    await expect(hub.start({ tunnelPort: 70000, stateDir })).rejects.toMatchObject({ code: 'ERR_INVALID_CONFIG', field: 'tunnelPort' });
    await expect(hub.start({ tunnelPort: 0, stateDir, bindHost: 'anywhere' })).rejects.toMatchObject({ field: 'bindHost' });
    await expect(hub.start({ tunnelPort: 0, stateDir, allowedEdges: [{ id: 'x', secret: 'short', listenPorts: [] }] })).rejects.toMatchObject({
      field: 'allowedEdges[0].secret',
    });
    expect(calls).toEqual([]);
  });

  it('re-emits addon event batches by kind; an addon error without listeners becomes a log event', async () => {
    const hub = new RemoteIngressHub();
    await hub.start({ tunnelPort: 0, stateDir });
    const seen: unknown[] = [];
    hub.on('edgeConnected', (event) => seen.push(event));
    const logs: string[] = [];
    hub.on('log', (event) => logs.push(`${event.level}:${event.message}`));
    emit(JSON.stringify([
      { kind: 'edgeConnected', edgeId: 'e1', remoteAddress: '127.0.0.1', remotePort: 5000, transport: 'tcpTls' },
      { kind: 'error', message: 'boom' },
      { kind: 'eventsDropped', count: 7 },
      { nokind: true },
    ]));
    emit('not json');
    expect(seen).toEqual([{ kind: 'edgeConnected', edgeId: 'e1', remoteAddress: '127.0.0.1', remotePort: 5000, transport: 'tcpTls' }]);
    expect(logs.some((line) => line.startsWith('error:') && line.includes('boom'))).toBe(true);
    expect(logs.some((line) => line.startsWith('warn:') && line.includes('7 events were dropped'))).toBe(true);
    expect(logs.some((line) => line.includes('without a kind'))).toBe(true);
    expect(logs.some((line) => line.includes('malformed event batch'))).toBe(true);
    await hub.stop({ graceMs: 0 });
  });
});

describe('RemoteIngressEdge', () => {
  const token = () =>
    encodeConnectionToken({ hubHost: '127.0.0.1', hubPort: 43127, edgeId: 'e1', secret: SECRET, hubFingerprint: fingerprintHolder.value });

  it('starts from a token with defaults filled in', async () => {
    const edge = new RemoteIngressEdge();
    await edge.start({ token: token() });
    expect(calls.find((call) => call.name === 'edgeStart')?.args[0]).toEqual({
      hubHost: '127.0.0.1',
      hubPort: 43127,
      edgeId: 'e1',
      secret: SECRET,
      hubFingerprint: fingerprintHolder.value,
      dangerouslyDisableFingerprintPinning: false,
      transportMode: 'quicWithFallback',
      reconnect: { baseMs: 500, capMs: 30000 },
    });
    expect(edge.getStatus().state).toBe('connecting');
    const ports: unknown[] = [];
    edge.on('portsAssigned', (event) => ports.push(event.tcp));
    emit(JSON.stringify([{ kind: 'portsAssigned', tcp: [8080], udp: [], failed: [] }]));
    expect(ports).toEqual([[8080]]);
    await Promise.all([edge.stop(), edge.stop()]);
    expect(calls.filter((call) => call.name === 'edgeStop')).toHaveLength(1);
    expect(edge.getStatus().state).toBe('stopped');
  });

  it('refuses to start without pinning, explaining why', async () => {
    const edge = new RemoteIngressEdge();
    await expect(edge.start({ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET })).rejects.toMatchObject({
      code: 'ERR_INVALID_CONFIG',
      field: 'hubFingerprint',
      message: expect.stringMatching(/pins the hub's certificate/),
    });
    expect(calls).toEqual([]);
  });

  it('passes the mode through and warns loudly when pinning is disabled', async () => {
    const edge = new RemoteIngressEdge();
    const logs: string[] = [];
    edge.on('log', (event) => logs.push(`${event.level}:${event.message}`));
    await edge.start({ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET, transportMode: 'tcpTls', dangerouslyDisableFingerprintPinning: true });
    const options = calls.find((call) => call.name === 'edgeStart')?.args[0] as Record<string, unknown>;
    expect(options.transportMode).toBe('tcpTls');
    expect(options.dangerouslyDisableFingerprintPinning).toBe(true);
    expect('hubFingerprint' in options).toBe(false);
    expect(logs.some((line) => line.startsWith('warn:') && line.includes('DISABLED'))).toBe(true);
    await edge.stop({ graceMs: 0 });
  });

  it.each([
    [{ token: 'garbage!' }, 'ERR_INVALID_TOKEN', 'token'],
    [{ token: 'x', hubHost: 'h' }, 'ERR_INVALID_CONFIG', 'hubHost'],
    [{ hubHost: 'h', hubPort: 0, edgeId: 'e1', secret: SECRET, hubFingerprint: 'ab'.repeat(32) }, 'ERR_INVALID_CONFIG', 'hubPort'],
    [{ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET, hubFingerprint: 'abc' }, 'ERR_INVALID_CONFIG', 'hubFingerprint'],
    [{ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET, hubFingerprint: 'ab'.repeat(32), dangerouslyDisableFingerprintPinning: true }, 'ERR_INVALID_CONFIG', 'dangerouslyDisableFingerprintPinning'],
    [{ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET, hubFingerprint: 'ab'.repeat(32), transportMode: 'udp' }, 'ERR_INVALID_CONFIG', 'transportMode'],
    [{ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET, hubFingerprint: 'ab'.repeat(32), reconnect: { baseMs: 1000, capMs: 10 } }, 'ERR_INVALID_CONFIG', 'reconnect.capMs'],
    [{ hubHost: 'h', hubPort: 1, edgeId: 'e1', secret: SECRET, hubFingerprint: 'ab'.repeat(32), extra: 1 }, 'ERR_INVALID_CONFIG', 'extra'],
  ])('rejects %o with %s naming %s', async (config, code, field) => {
    const edge = new RemoteIngressEdge();
    await expect(edge.start(config as never)).rejects.toMatchObject({ code, field });
    expect(calls).toEqual([]);
  });
});
