import { describe, expect, it } from 'vitest';
import { TunnelError, diffAllowedEdges, parseJsonText, validateAllowedEdges, validateLimits, validatePerformance } from '../../packages/core/src/index.js';

const SECRET = 's3cret-s3cret-s3cret';
const opts = { targetHost: '127.0.0.1' };

function rejection(edges: unknown): TunnelError {
  try {
    validateAllowedEdges(edges, opts);
  } catch (error) {
    expect(error).toBeInstanceOf(TunnelError);
    expect((error as TunnelError).code).toBe('ERR_INVALID_CONFIG');
    return error as TunnelError;
  }
  throw new Error('expected validation to fail');
}

describe('validateAllowedEdges: normalisation', () => {
  it('fills defaults into the addon shape', () => {
    const [edge] = validateAllowedEdges([{ id: 'edge-1', secret: SECRET, listenPorts: [8080] }], opts);
    expect(edge).toEqual({
      id: 'edge-1',
      secret: SECRET,
      bindAddress: null,
      tcp: [{ port: 8080, targetHost: '127.0.0.1', targetPort: 8080, proxyProtocol: 'v1' }],
      udp: [],
      firewall: null,
      stunIntervalSecs: null,
      stunServers: [],
    });
  });

  it('applies per-port overrides and the edge-level proxyProtocol default', () => {
    const [edge] = validateAllowedEdges(
      [
        {
          id: 'e',
          secret: SECRET,
          proxyProtocol: 'v2',
          bindAddress: '::',
          listenPorts: [443, { port: 8080, targetHost: 'backend.internal', targetPort: 80, proxyProtocol: 'none' }],
          listenPortsUdp: [5353, { port: 5354, proxyProtocol: 'none' }],
          stunIntervalSecs: 30,
          stunServers: ['stun.example.net', 'stun.example.net:3479', '192.0.2.1:3478', '[2001:db8::1]:3478', '2001:db8::2'],
        },
      ],
      { targetHost: '10.0.0.5' },
    );
    expect(edge?.tcp).toEqual([
      { port: 443, targetHost: '10.0.0.5', targetPort: 443, proxyProtocol: 'v2' },
      { port: 8080, targetHost: 'backend.internal', targetPort: 80, proxyProtocol: 'none' },
    ]);
    expect(edge?.udp).toEqual([
      { port: 5353, targetHost: '10.0.0.5', targetPort: 5353, proxyProtocol: 'v2', proxyProtocolUdp: 'everyDatagram' },
      { port: 5354, targetHost: '10.0.0.5', targetPort: 5354, proxyProtocol: 'none', proxyProtocolUdp: 'everyDatagram' },
    ]);
    expect(edge?.bindAddress).toBe('::');
    expect(edge?.stunIntervalSecs).toBe(30);
    expect(edge?.stunServers).toHaveLength(5);
  });

  it('takes a UDP port\'s PROXY v2 header mode and rejects it on TCP ports or with a bad value', () => {
    const [edge] = validateAllowedEdges(
      [{ id: 'e', secret: SECRET, listenPorts: [], listenPortsUdp: [{ port: 53, proxyProtocolUdp: 'separateDatagram' }, { port: 54, proxyProtocolUdp: 'firstDatagram' }] }],
      opts,
    );
    expect(edge?.udp.map((p) => p.proxyProtocolUdp)).toEqual(['separateDatagram', 'firstDatagram']);
    expect(() => validateAllowedEdges([{ id: 'e', secret: SECRET, listenPorts: [{ port: 80, proxyProtocolUdp: 'everyDatagram' }] }], opts)).toThrow(
      /listenPorts\[0\]\.proxyProtocolUdp.*UDP ports only/,
    );
    expect(() =>
      validateAllowedEdges([{ id: 'e', secret: SECRET, listenPorts: [], listenPortsUdp: [{ port: 53, proxyProtocolUdp: 'always' as never }] }], opts),
    ).toThrow(/listenPortsUdp\[0\]\.proxyProtocolUdp.*'everyDatagram', 'firstDatagram' or 'separateDatagram'/);
  });

  it('gives UDP ports PROXY v2 when the edge default is v1', () => {
    const [edge] = validateAllowedEdges([{ id: 'e', secret: SECRET, listenPorts: [], listenPortsUdp: [53] }], opts);
    expect(edge?.udp[0]?.proxyProtocol).toBe('v2');
  });

  it('normalises a firewall config with defaults', () => {
    const [edge] = validateAllowedEdges(
      [
        {
          id: 'e',
          secret: SECRET,
          listenPorts: [80],
          firewallConfig: {
            blockedIps: ['203.0.113.7', '198.51.100.0/24', '2001:db8::/32'],
            rateLimits: [{ id: 'web', port: 80, protocol: 'tcp', rate: '200/second', burst: 50, perSourceIP: true }],
            rules: [{ id: 'ssh', direction: 'input', action: 'drop', destPort: 22 }],
          },
        },
      ],
      opts,
    );
    expect(edge?.firewall).toEqual({
      blockedIps: ['203.0.113.7', '198.51.100.0/24', '2001:db8::/32'],
      rateLimits: [{ id: 'web', port: 80, protocol: 'tcp', rate: '200/second', burst: 50, perSourceIP: true }],
      rules: [{ id: 'ssh', direction: 'input', action: 'drop', sourceIP: null, destPort: 22, protocol: null }],
    });
  });

  it('accepts an empty list, and the same port on several edges', () => {
    expect(validateAllowedEdges([], opts)).toEqual([]);
    const edges = validateAllowedEdges(
      [
        { id: 'a', secret: SECRET, listenPorts: [443] },
        { id: 'b', secret: SECRET, listenPorts: [443] },
      ],
      opts,
    );
    expect(edges.map((edge) => edge.id)).toEqual(['a', 'b']);
  });
});

describe('validateAllowedEdges: every bad field is named with edge id and value', () => {
  const base = { id: 'edge-1', secret: SECRET, listenPorts: [8080] };
  const cases: Array<[string, Record<string, unknown>, string, string]> = [
    ['id pattern', { id: 'bad id!' }, 'allowedEdges[0].id', '"bad id!"'],
    ['id too long', { id: 'x'.repeat(65) }, 'allowedEdges[0].id', 'xxxx'],
    ['short secret', { secret: 'short' }, 'allowedEdges[0].secret', '5 characters'],
    ['secret type', { secret: 42 }, 'allowedEdges[0].secret', 'number'],
    ['listenPorts missing', { listenPorts: undefined }, 'allowedEdges[0].listenPorts', 'required'],
    ['listenPorts type', { listenPorts: '8080' }, 'allowedEdges[0].listenPorts', '"8080"'],
    ['port range', { listenPorts: [70000] }, 'allowedEdges[0].listenPorts[0]', '70000'],
    ['port zero', { listenPorts: [0] }, 'allowedEdges[0].listenPorts[0]', '0'],
    ['port fraction', { listenPorts: [80.5] }, 'allowedEdges[0].listenPorts[0]', '80.5'],
    ['duplicate tcp port', { listenPorts: [80, { port: 80 }] }, 'allowedEdges[0].listenPorts[1].port', 'duplicate'],
    ['duplicate udp port', { listenPortsUdp: [53, 53] }, 'allowedEdges[0].listenPortsUdp[1]', 'duplicate'],
    ['targetHost empty', { listenPorts: [{ port: 80, targetHost: '' }] }, 'allowedEdges[0].listenPorts[0].targetHost', '""'],
    ['targetHost spaces', { listenPorts: [{ port: 80, targetHost: 'a b' }] }, 'allowedEdges[0].listenPorts[0].targetHost', '"a b"'],
    ['targetPort', { listenPorts: [{ port: 80, targetPort: -1 }] }, 'allowedEdges[0].listenPorts[0].targetPort', '-1'],
    ['port proxyProtocol', { listenPorts: [{ port: 80, proxyProtocol: 'v3' }] }, 'allowedEdges[0].listenPorts[0].proxyProtocol', '"v3"'],
    ['udp proxy v1', { listenPortsUdp: [{ port: 53, proxyProtocol: 'v1' }] }, 'allowedEdges[0].listenPortsUdp[0].proxyProtocol', 'UDP'],
    ['unknown port key', { listenPorts: [{ port: 80, target: 'x' }] }, 'allowedEdges[0].listenPorts[0].target', 'unknown field'],
    ['edge proxyProtocol', { proxyProtocol: 'yes' }, 'allowedEdges[0].proxyProtocol', '"yes"'],
    ['bindAddress', { bindAddress: 'example.com' }, 'allowedEdges[0].bindAddress', '"example.com"'],
    ['stunIntervalSecs', { stunIntervalSecs: 0 }, 'allowedEdges[0].stunIntervalSecs', '0'],
    ['stunServers type', { stunServers: 'stun.example.net' }, 'allowedEdges[0].stunServers', '"stun.example.net"'],
    ['stunServers entry', { stunServers: ['stun.example.net:99999'] }, 'allowedEdges[0].stunServers[0]', '"stun.example.net:99999"'],
    ['stunServers v6 without brackets', { stunServers: ['[2001:db8::1'] }, 'allowedEdges[0].stunServers[0]', '"[2001:db8::1"'],
    ['unknown edge key', { listenport: [1] }, 'allowedEdges[0].listenport', 'unknown field'],
    ['firewall type', { firewallConfig: [] }, 'allowedEdges[0].firewallConfig', '[]'],
    ['blockedIps entry', { firewallConfig: { blockedIps: ['10.0.0.0/33'] } }, 'allowedEdges[0].firewallConfig.blockedIps[0]', '10.0.0.0/33'],
    ['blockedIps v6 prefix', { firewallConfig: { blockedIps: ['::1/129'] } }, 'allowedEdges[0].firewallConfig.blockedIps[0]', '::1/129'],
    [
      'rate format',
      { firewallConfig: { rateLimits: [{ id: 'r', port: 80, protocol: 'tcp', rate: '200/day' }] } },
      'allowedEdges[0].firewallConfig.rateLimits[0].rate',
      '"200/day"',
    ],
    [
      'rate protocol',
      { firewallConfig: { rateLimits: [{ id: 'r', port: 80, protocol: 'icmp', rate: '1/second' }] } },
      'allowedEdges[0].firewallConfig.rateLimits[0].protocol',
      '"icmp"',
    ],
    [
      'rate burst',
      { firewallConfig: { rateLimits: [{ id: 'r', port: 80, protocol: 'tcp', rate: '1/second', burst: -2 }] } },
      'allowedEdges[0].firewallConfig.rateLimits[0].burst',
      '-2',
    ],
    [
      'rate perSourceIP',
      { firewallConfig: { rateLimits: [{ id: 'r', port: 80, protocol: 'tcp', rate: '1/second', perSourceIP: 'yes' }] } },
      'allowedEdges[0].firewallConfig.rateLimits[0].perSourceIP',
      '"yes"',
    ],
    [
      'duplicate rate id',
      {
        firewallConfig: {
          rateLimits: [
            { id: 'r', port: 80, protocol: 'tcp', rate: '1/second' },
            { id: 'r', port: 81, protocol: 'tcp', rate: '1/second' },
          ],
        },
      },
      'allowedEdges[0].firewallConfig.rateLimits[1].id',
      'duplicate',
    ],
    [
      'rule direction',
      { firewallConfig: { rules: [{ id: 'x', direction: 'inbound', action: 'drop' }] } },
      'allowedEdges[0].firewallConfig.rules[0].direction',
      '"inbound"',
    ],
    [
      'rule action',
      { firewallConfig: { rules: [{ id: 'x', direction: 'input', action: 'allow' }] } },
      'allowedEdges[0].firewallConfig.rules[0].action',
      '"allow"',
    ],
    [
      'rule sourceIP',
      { firewallConfig: { rules: [{ id: 'x', direction: 'input', action: 'drop', sourceIP: '1.2.3' }] } },
      'allowedEdges[0].firewallConfig.rules[0].sourceIP',
      '"1.2.3"',
    ],
    [
      'rule destPort',
      { firewallConfig: { rules: [{ id: 'x', direction: 'input', action: 'drop', destPort: 65536 }] } },
      'allowedEdges[0].firewallConfig.rules[0].destPort',
      '65536',
    ],
    [
      'duplicate rule id',
      {
        firewallConfig: {
          rules: [
            { id: 'x', direction: 'input', action: 'drop' },
            { id: 'x', direction: 'input', action: 'accept' },
          ],
        },
      },
      'allowedEdges[0].firewallConfig.rules[1].id',
      'duplicate',
    ],
  ];

  it.each(cases)('%s', (_name, patch, field, valueText) => {
    const edge: Record<string, unknown> = { ...base, ...patch };
    for (const key of Object.keys(edge)) if (edge[key] === undefined) delete edge[key];
    const error = rejection([edge]);
    expect(error.field).toBe(field);
    expect(error.message).toContain(valueText);
    const edgeName = typeof edge.id === 'string' && /^[A-Za-z0-9._-]{1,64}$/.test(edge.id) ? `edge "${edge.id}"` : 'allowedEdges[0]';
    expect(error.message).toContain(edgeName);
  });

  it('never prints a secret', () => {
    const error = rejection([{ ...base, secret: 'tooshort-secret' }]);
    expect(error.message).not.toContain('tooshort-secret');
  });

  it('rejects duplicate edge ids, naming both positions', () => {
    const error = rejection([base, { ...base }]);
    expect(error.field).toBe('allowedEdges[1].id');
    expect(error.message).toMatch(/duplicate id \(also allowedEdges\[0\]\)/);
  });

  it('rejects a non-array and non-object entries', () => {
    expect(rejection({ edges: [] }).field).toBe('allowedEdges');
    expect(rejection([42]).field).toBe('allowedEdges[0]');
  });

  it('reports every problem of a list at once, naming each edge', () => {
    const error = rejection([
      { id: 'good', secret: SECRET, listenPorts: [80] },
      { id: 'bad-port', secret: SECRET, listenPorts: [99999] },
      { id: 'bad-secret', secret: 'x', listenPorts: [80] },
    ]);
    expect(error.issues.map((issue) => issue.field)).toEqual(['allowedEdges[1].listenPorts[0]', 'allowedEdges[2].secret']);
    expect(error.message).toContain('edge "bad-port" listenPorts[0] = 99999');
    expect(error.message).toContain('edge "bad-secret" secret');
  });
});

describe('validatePerformance', () => {
  it('keeps known positive integers', () => {
    expect(validatePerformance({ workerThreads: 2, streamWindow: 262144 })).toEqual({ workerThreads: 2, streamWindow: 262144 });
  });
  it('allows 0 (the addon default) and names unknown and invalid fields', () => {
    expect(validatePerformance({ workerThreads: 0, socketBuffer: 0 })).toEqual({ workerThreads: 0, socketBuffer: 0 });
    expect(() => validatePerformance({ workerThreads: -1 })).toThrow(/performance\.workerThreads = -1/);
    expect(() => validatePerformance({ streamWindow: 1.5 })).toThrow(/performance\.streamWindow = 1\.5/);
    expect(() => validatePerformance({ threads: 2 })).toThrow(/performance\.threads/);
    expect(() => validatePerformance([])).toThrow(/performance = \[\]/);
  });
});

describe('validateLimits', () => {
  it('keeps positive integers and names bad ones', () => {
    expect(validateLimits({ heartbeatIntervalMs: 500, heartbeatTimeoutMs: 1500 })).toEqual({ heartbeatIntervalMs: 500, heartbeatTimeoutMs: 1500 });
    expect(() => validateLimits({ heartbeatTimeoutMs: 0 })).toThrow(/limits\.heartbeatTimeoutMs = 0/);
    expect(() => validateLimits({ heartbeat: 1 })).toThrow(/limits\.heartbeat /);
  });

  it("takes issue 24's limits: UDP flows per service and per source, unanswered flows, the drain", () => {
    const limits = { maxUdpFlowsPerService: 100, maxUdpFlowsPerSource: 10, udpUnansweredIdleMs: 2000, drainTimeoutMs: 30_000 };
    expect(validateLimits(limits)).toEqual(limits);
    for (const key of Object.keys(limits)) {
      expect(() => validateLimits({ [key]: 0 })).toThrow(new RegExp(`limits\\.${key} = 0`));
    }
  });
});

describe('diffAllowedEdges', () => {
  const edge = (id: string, port: number, secret = SECRET) => validateAllowedEdges([{ id, secret, listenPorts: [port] }], opts)[0]!;
  it.each([
    ['no change', [edge('a', 1)], [edge('a', 1)], { added: [], removed: [], changed: [], unchanged: ['a'] }],
    ['added', [], [edge('a', 1)], { added: ['a'], removed: [], changed: [], unchanged: [] }],
    ['removed', [edge('a', 1)], [], { added: [], removed: ['a'], changed: [], unchanged: [] }],
    [
      'ports and secret changed',
      [edge('a', 1), edge('b', 2)],
      [edge('a', 3), edge('b', 2, 'another-secret-value')],
      { added: [], removed: [], changed: [{ id: 'a', fields: ['tcp'] }, { id: 'b', fields: ['secret'] }], unchanged: [] },
    ],
  ])('%s', (_name, before, after, expected) => {
    expect(diffAllowedEdges(before, after)).toEqual(expected);
  });
});

describe('validateAllowedEdges: firewall ids', () => {
  it('accepts the ids the edge can turn into nftables names and refuses the rest, naming the field', () => {
    const edge = (id: string) => [{ id: 'edge-1', secret: SECRET, listenPorts: [8080], firewallConfig: { blockedIps: [], rateLimits: [{ id, port: 8080, protocol: 'tcp', rate: '20/second' }], rules: [] } }];
    expect(() => validateAllowedEdges(edge('web_conns-1'), opts)).not.toThrow();
    for (const bad of ['web.conns', 'x'.repeat(33), '']) {
      expect(rejection(edge(bad)).message).toContain('firewallConfig.rateLimits[0].id');
    }
  });
});

describe('parseJsonText: a syntax error is reported by position, never by quoting the text', () => {
  function failure(text: string): string {
    try {
      parseJsonText(text, '--allowed-edges edges.json');
    } catch (error) {
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).code).toBe('ERR_INVALID_CONFIG');
      expect((error as Error).cause).toBeUndefined();
      return (error as Error).message;
    }
    throw new Error('expected a parse error');
  }

  it('names line and column and leaves a secret next to the error out', () => {
    const secretValue = 'hunter2-hunter2-hunter2-do-not-print';
    const text = `[\n  { "id": "edge-1",\n    "secret": ${secretValue} }\n]`;
    const message = failure(text);
    expect(message).toBe('--allowed-edges edges.json is not valid JSON: InvalidSymbol at line 3, column 15');
    expect(message).not.toContain('hunter2');
  });

  it('reports a missing bracket at the end, a trailing comma and empty input', () => {
    expect(failure('[{')).toMatch(/at line 1, column 3$/);
    expect(failure('[1,]')).toMatch(/ValueExpected at line 1, column 4$/);
    expect(failure('  \n')).toMatch(/is not valid JSON: it is empty$/);
  });

  // Seeded mutations of a valid file: whatever JSON.parse refuses gets a position, and the
  // message never carries more of the input than the source's name.
  it('gives every refused mutation a position and quotes none of it', () => {
    const valid = JSON.stringify([{ id: 'edge-1', secret: 'zq-Secret-Value-1234', listenPorts: [443, 8443] }], null, 2);
    let seed = 20241207;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    let refused = 0;
    for (let i = 0; i < 500; i += 1) {
      const at = next(valid.length);
      const junk = '{}[],:"x\\ 1'.charAt(next(11));
      const mutated = next(2) === 0 ? valid.slice(0, at) + junk + valid.slice(at) : valid.slice(0, at) + valid.slice(at + 1);
      try {
        JSON.parse(mutated);
        continue;
      } catch {
        refused += 1;
      }
      const message = failure(mutated);
      expect(message).toMatch(/ at line \d+, column \d+$|: it is empty$/);
      expect(message).not.toContain('Secret-Value');
    }
    expect(refused).toBeGreaterThan(300);
  });
});
