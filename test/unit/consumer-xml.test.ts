import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// The module under test imports TunnelError through the workspace link; use the same copy so
// `instanceof` holds.
import { TunnelError } from 'remoteingress-core';
import { parseConsumerXml, readConsumerXml, type IConsumerConfig } from '../../packages/edge/src/consumer-xml.js';

const FILE = 'consumer.xml';
const UUID_WEB = '3f1c2a4e-7b1d-4c8e-9a2f-0123456789ab';
const UUID_DB = '9d0e5b7a-1c2f-4e3d-8b6a-fedcba987654';

/** Two services: `web` overrides some defaults, `db` inherits them; line numbers matter below. */
const VALID = `<?xml version="1.0"?>
<service_consumer>
  <max_connections>100</max_connections>
  <request_buffer>65536</request_buffer>
  <request_ttl>30</request_ttl>
  <listener>
    <inaddr_any>yes</inaddr_any>
    <port>9000</port>
  </listener>
  <services>
    <service>
      <uuid>${UUID_WEB}</uuid>
      <name>web</name>
      <inaddr_any>no</inaddr_any>
      <port>8080</port>
      <max_connections>5</max_connections>
      <request_buffer>32768</request_buffer>
      <request_ttl>10</request_ttl>
    </service>
    <service>
      <uuid>${UUID_DB}</uuid>
      <inaddr_any>yes</inaddr_any>
      <port>5432</port>
    </service>
  </services>
</service_consumer>
`;

const VALID_CONFIG: IConsumerConfig = {
  listener: { port: 9000, bindHost: '0.0.0.0' },
  services: [
    { id: UUID_WEB, name: 'web', edgePort: 8080, bindAddress: '127.0.0.1', maxConnections: 5, bufferBytes: 32768, idleTimeoutSecs: 10 },
    { id: UUID_DB, edgePort: 5432, bindAddress: '0.0.0.0', maxConnections: 100, bufferBytes: 65536, idleTimeoutSecs: 30 },
  ],
};

/** `VALID` with `search` replaced; fails loudly if `search` is not there, so a test cannot go stale. */
function edit(search: string | RegExp, replacement: string, text = VALID): string {
  const result = text.replace(search, replacement);
  expect(result, `edit did not apply: ${String(search)}`).not.toBe(text);
  return result;
}

function rejection(text: string): TunnelError {
  try {
    parseConsumerXml(text, FILE);
  } catch (error) {
    expect(error).toBeInstanceOf(TunnelError);
    expect((error as TunnelError).code).toBe('ERR_INVALID_CONFIG');
    expect((error as TunnelError).message.startsWith(`${FILE}:`)).toBe(true);
    return error as TunnelError;
  }
  throw new Error('expected parseConsumerXml to fail');
}

describe('parseConsumerXml: valid files', () => {
  it('maps a full file, per-service values overriding the top-level defaults', () => {
    expect(parseConsumerXml(VALID, FILE)).toStrictEqual(VALID_CONFIG);
  });

  it('leaves a limit out when neither the service nor the defaults give it', () => {
    const text = edit(/\s*<max_connections>100<\/max_connections>\s*<request_buffer>65536<\/request_buffer>\s*<request_ttl>30<\/request_ttl>/, '');
    const { services } = parseConsumerXml(text, FILE);
    expect(services[1]).toStrictEqual({ id: UUID_DB, edgePort: 5432, bindAddress: '0.0.0.0' });
    expect(services[0]).toMatchObject({ maxConnections: 5, bufferBytes: 32768, idleTimeoutSecs: 10 });
  });

  it('defaults inaddr_any to no (loopback) for the listener and services', () => {
    const text = edit(/<inaddr_any>[a-z]+<\/inaddr_any>/g, '');
    const config = parseConsumerXml(text, FILE);
    expect(config.listener.bindHost).toBe('127.0.0.1');
    expect(config.services.map((service) => service.bindAddress)).toEqual(['127.0.0.1', '127.0.0.1']);
  });

  it('tolerates whitespace, CRLF, comments, CDATA, a BOM and yes/no in any case', () => {
    const text =
      '\uFEFF' +
      edit('<port>8080</port>', '<port>\n\t 8080 \r\n</port><!-- public -->')
        .replace('<inaddr_any>yes</inaddr_any>', '<inaddr_any>  YES\n</inaddr_any>')
        .replace('<name>web</name>', '<name> <![CDATA[web]]> </name>')
        .replace('<port>5432</port>', '<port  >5432</port >')
        .replace(/\n/g, '\r\n');
    expect(parseConsumerXml(text, FILE)).toStrictEqual(VALID_CONFIG);
  });

  it('decodes the predefined entities and character references in values', () => {
    const text = edit('<name>web</name>', '<name>web &amp; api &#8211; &#x41;</name>');
    expect(parseConsumerXml(text, FILE).services[0]?.name).toBe('web & api \u2013 A');
  });

  it('accepts a name-style id as well as a UUID', () => {
    const text = edit(`<uuid>${UUID_DB}</uuid>`, '<uuid>postgres.main_1-a</uuid>');
    expect(parseConsumerXml(text, FILE).services[1]?.id).toBe('postgres.main_1-a');
  });
});

describe('parseConsumerXml: the five broken files', () => {
  it('(1) malformed XML: an unclosed tag is reported with line and column', () => {
    const error = rejection(edit('<port>5432</port>', '<port>5432'));
    // Line 24 is `</service>`, where the validator finds `<port>` still open.
    expect(error.message).toMatch(/^consumer\.xml:24:\d+: not well-formed XML: .*'port'/);
  });

  it('(2) an unknown element is named with its path and line', () => {
    const error = rejection(edit('<max_connections>5</max_connections>', '<max_conections>5</max_conections>'));
    expect(error.message).toBe(
      'consumer.xml:16: unknown element <max_conections> in <service_consumer>/<services>/<service> ' +
        '(expected one of: uuid, name, inaddr_any, port, max_connections, request_buffer, request_ttl)',
    );
    expect(error.field).toBe('service_consumer/services/service[1]/max_conections');
  });

  it.each([
    ['70000', '70000'],
    ['abc', 'abc'],
    [' 0 ', '0'],
    ['-1', '-1'],
    ['8080.0', '8080.0'],
    ['0x1F90', '0x1F90'],
    ['', ''],
  ])('(3) a bad port %j names the element, service and value', (given, shown) => {
    const error = rejection(edit('<port>8080</port>', `<port>${given}</port>`));
    expect(error.message).toBe(`consumer.xml:15: <port> in service "web" (uuid ${UUID_WEB}): ${JSON.stringify(shown)} is not a port (1-65535)`);
    expect(error.field).toBe('service_consumer/services/service[1]/port');
    expect(error.value).toBe(shown);
  });

  it('(4) a duplicate uuid names the uuid and both lines, ignoring case', () => {
    const error = rejection(edit(`<uuid>${UUID_DB}</uuid>`, `<uuid>${UUID_WEB.toUpperCase()}</uuid>`));
    expect(error.message).toBe(
      `consumer.xml:21: duplicate <uuid> "${UUID_WEB.toUpperCase()}": service ${UUID_WEB.toUpperCase()} at line 21 ` +
        `and service "web" (uuid ${UUID_WEB}) at line 12`,
    );
  });

  it('(5) a bad yes/no value is named with its element and line', () => {
    const error = rejection(edit('<inaddr_any>yes</inaddr_any>', '<inaddr_any>maybe</inaddr_any>'));
    expect(error.message).toBe('consumer.xml:7: <inaddr_any> in <listener> must be yes or no, got "maybe"');
  });
});

describe('parseConsumerXml: structure', () => {
  it('requires <listener>', () => {
    expect(rejection(edit(/<listener>[\s\S]*<\/listener>/, '')).message).toBe('consumer.xml:2: <service_consumer> has no <listener>');
  });

  it('requires <services> with at least one <service>', () => {
    expect(rejection(edit(/<services>[\s\S]*<\/services>/, '')).message).toBe('consumer.xml:2: <service_consumer> has no <services>');
    expect(rejection(edit(/<services>[\s\S]*<\/services>/, '<services>\n  </services>')).message).toBe(
      'consumer.xml:10: <services> has no <service>',
    );
  });

  it('requires <uuid> and <port> in a service, and <port> in the listener', () => {
    expect(rejection(edit(`<uuid>${UUID_DB}</uuid>`, '')).message).toBe('consumer.xml:20: service #2 has no <uuid>');
    expect(rejection(edit('<port>5432</port>', '')).message).toBe(`consumer.xml:20: service ${UUID_DB} has no <port>`);
    expect(rejection(edit('<port>9000</port>', '')).message).toBe('consumer.xml:6: <listener> has no <port>');
  });

  it('refuses a DOCTYPE (and so any entity definitions) before parsing', () => {
    const withDoctype = edit(
      '<?xml version="1.0"?>\n',
      '<?xml version="1.0"?>\n<!DOCTYPE service_consumer [\n  <!ENTITY lol "lol">\n  <!ENTITY lol2 "&lol;&lol;&lol;">\n]>\n',
    ).replace('<name>web</name>', '<name>&lol2;</name>');
    expect(rejection(withDoctype).message).toMatch(/^consumer\.xml:2:1: <!DOCTYPE> is not allowed/);
    // The validator skips a DOCTYPE even inside an element; it is refused there too.
    expect(rejection(edit('<listener>', '<listener><!DOCTYPE x>')).message).toMatch(/^consumer\.xml:6:\d+: <!DOCTYPE> is not allowed/);
  });

  it('refuses an unknown root element', () => {
    expect(rejection('<consumer>\n</consumer>').message).toBe('consumer.xml:1: the root element must be <service_consumer>, found <consumer>');
  });

  it('refuses a repeated single element', () => {
    const error = rejection(edit('<port>8080</port>', '<port>8080</port>\n      <port>8081</port>'));
    expect(error.message).toBe('consumer.xml:16: <port> appears more than once in service #1 (first at line 15)');
    expect(rejection(edit('</listener>', '</listener>\n  <listener><port>9001</port></listener>')).message).toBe(
      'consumer.xml:10: <listener> appears more than once in <service_consumer> (first at line 6)',
    );
  });

  it('refuses attributes and nested elements where a value is expected', () => {
    expect(rejection(edit('<port>8080</port>', '<port proto="tcp">8080</port>')).message).toBe(
      `consumer.xml:15: <port> in service "web" (uuid ${UUID_WEB}) must not have attributes (found: proto)`,
    );
    expect(rejection(edit('<port>8080</port>', '<port><value>8080</value></port>')).message).toBe(
      `consumer.xml:15: <port> in service "web" (uuid ${UUID_WEB}): expected a value, found element <value>`,
    );
    expect(rejection(edit('<listener>', '<listener>\n    port 9000')).message).toBe(
      'consumer.xml:6: unexpected text "port 9000" in <listener> (it holds only elements)',
    );
  });

  it('refuses element names the XML library itself would choke on, as unknown elements', () => {
    expect(rejection(edit('<listener>', '<constructor/><listener>')).message).toMatch(
      /^consumer\.xml:6: unknown element <constructor> in <service_consumer> \(expected one of: /,
    );
  });

  it('refuses unknown entities and character references to forbidden characters', () => {
    expect(rejection(edit('<name>web</name>', '<name>&nbsp;web</name>')).message).toMatch(/^consumer\.xml:13: <name> in service #1: unknown entity &nbsp;/);
    expect(rejection(edit('<name>web</name>', '<name>&#0;web</name>')).message).toMatch(/^consumer\.xml:13: .*&#0;/);
  });

  it('refuses characters XML does not allow, with line and column', () => {
    expect(rejection(edit('<name>web</name>', '<name>w\u0007eb</name>')).message).toBe(
      'consumer.xml:13:14: not well-formed XML: character U+0007 is not allowed in XML',
    );
  });
});

describe('parseConsumerXml: values and conflicts', () => {
  it.each([
    ['max_connections', '0', 'is not a valid connection limit (1-1000000)'],
    ['max_connections', '1000001', 'is not a valid connection limit (1-1000000)'],
    ['request_buffer', '1023', 'is not a valid buffer size (1024-1073741824 bytes)'],
    ['request_buffer', '1073741825', 'is not a valid buffer size (1024-1073741824 bytes)'],
    ['request_ttl', '0', 'is not a valid time-to-live (1-86400 seconds)'],
    ['request_ttl', '86401', 'is not a valid time-to-live (1-86400 seconds)'],
    ['request_ttl', '1e3', 'is not a valid time-to-live (1-86400 seconds)'],
  ])('refuses <%s>%s, as a default and in a service', (element, value, problem) => {
    // The first occurrence is the top-level default (lines 3-5), the last the one in "web".
    const asDefault = rejection(edit(new RegExp(`<${element}>\\d+</${element}>`), `<${element}>${value}</${element}>`));
    expect(asDefault.message).toMatch(new RegExp(`^consumer\\.xml:[345]: <${element}> in <service_consumer>: `));
    expect(asDefault.message).toContain(`: "${value}" ${problem}`);
    const inService = rejection(edit(new RegExp(`(<${element}>)\\d+(</${element}>)(?![\\s\\S]*<${element}>)`), `$1${value}$2`));
    expect(inService.message).toMatch(new RegExp(`^consumer\\.xml:1[678]: <${element}> in service "web" \\(uuid ${UUID_WEB}\\): `));
    expect(inService.message).toContain(`: "${value}" ${problem}`);
  });

  it('accepts the limits at both ends of their ranges', () => {
    const low = edit('<max_connections>5</max_connections>', '<max_connections>1</max_connections>')
      .replace('<request_buffer>32768</request_buffer>', '<request_buffer>1024</request_buffer>')
      .replace('<request_ttl>10</request_ttl>', '<request_ttl>1</request_ttl>')
      .replace('<port>8080</port>', '<port>1</port>');
    expect(parseConsumerXml(low, FILE).services[0]).toMatchObject({ edgePort: 1, maxConnections: 1, bufferBytes: 1024, idleTimeoutSecs: 1 });
    const high = edit('<max_connections>5</max_connections>', '<max_connections>1000000</max_connections>')
      .replace('<request_buffer>32768</request_buffer>', '<request_buffer>1073741824</request_buffer>')
      .replace('<request_ttl>10</request_ttl>', '<request_ttl>86400</request_ttl>')
      .replace('<port>8080</port>', '<port>65535</port>');
    expect(parseConsumerXml(high, FILE).services[0]).toMatchObject({
      edgePort: 65535,
      maxConnections: 1_000_000,
      bufferBytes: 1_073_741_824,
      idleTimeoutSecs: 86_400,
    });
  });

  it('refuses two services on one port, and a service on the listener port', () => {
    expect(rejection(edit('<port>5432</port>', '<port>8080</port>')).message).toBe(
      `consumer.xml:23: <port> 8080 of service ${UUID_DB} is already used by service "web" (uuid ${UUID_WEB}) at line 15`,
    );
    expect(rejection(edit('<port>5432</port>', '<port>9000</port>')).message).toBe(
      `consumer.xml:23: <port> 9000 of service ${UUID_DB} is the <listener> port at line 8`,
    );
  });

  it('refuses an id that is neither a UUID nor a plain name', () => {
    expect(rejection(edit(`<uuid>${UUID_DB}</uuid>`, '<uuid>db server</uuid>')).message).toMatch(
      /^consumer\.xml:21: <uuid> in service #2: "db server" is not a UUID or a name of 1-64 characters/,
    );
  });

  it('reports every problem at once, each with its line', () => {
    const error = rejection(
      edit('<port>8080</port>', '<port>70000</port>').replace('<inaddr_any>yes</inaddr_any>', '<inaddr_any>maybe</inaddr_any>'),
    );
    expect(error.message).toBe(
      'consumer.xml: 2 problems:\n' +
        '  - consumer.xml:7: <inaddr_any> in <listener> must be yes or no, got "maybe"\n' +
        `  - consumer.xml:15: <port> in service "web" (uuid ${UUID_WEB}): "70000" is not a port (1-65535)`,
    );
    expect(error.issues).toHaveLength(2);
    expect(error.field).toBe('service_consumer/listener/inaddr_any');
  });
});

describe('readConsumerXml', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'consumer-xml-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads and parses a file, naming it in errors', async () => {
    const path = join(dir, 'consumer.xml');
    await writeFile(path, VALID);
    await expect(readConsumerXml(path)).resolves.toStrictEqual(VALID_CONFIG);
    await writeFile(path, edit('<port>8080</port>', '<port>abc</port>'));
    await expect(readConsumerXml(path)).rejects.toThrow(`${path}:15: <port> in service "web"`);
  });

  it('names the path when the file cannot be read', async () => {
    const path = join(dir, 'missing.xml');
    const error = await readConsumerXml(path).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TunnelError);
    expect((error as TunnelError).code).toBe('ERR_INVALID_CONFIG');
    expect((error as TunnelError).message).toMatch(new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot read consumer\\.xml: .*ENOENT`));
  });
});

describe('parseConsumerXml: mutation fuzz', () => {
  /** mulberry32: a tiny seeded PRNG, so every run mutates the same way and a failure reproduces. */
  function mulberry32(seed: number): () => number {
    let state = seed >>> 0;
    return () => {
      state = (state + 0x6d2b79f5) >>> 0;
      let t = state;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
    };
  }

  const ALPHABET = ['<', '>', '/', '&', ';', '"', "'", '!', '?', '[', ']', '-', '=', '#', ' ', '\n', '\t', '\u0000', 'x', '9', '0', 'é', '\uD800', 'yes', 'no'];
  const NAMES = ['service_consumer', 'listener', 'services', 'service', 'uuid', 'name', 'inaddr_any', 'port', 'max_connections', 'request_buffer', 'request_ttl'];
  const NUMBERS = ['0', '1', '-1', '9000', '8080', '5432', '65535', '65536', '1023', '1024', '86400', '99999999999999999999', '1e3', ' 7 '];

  function mutate(text: string, random: () => number): string {
    const int = (n: number): number => Math.floor(random() * n);
    const pick = <T,>(items: readonly T[]): T => items[int(items.length)] as T;
    const at = int(text.length + 1);
    const length = 1 + int(24);
    switch (int(8)) {
      case 0: // delete a range
        return text.slice(0, at) + text.slice(at + length);
      case 1: {
        // duplicate a range somewhere else
        const to = int(text.length + 1);
        return text.slice(0, to) + text.slice(at, at + length) + text.slice(to);
      }
      case 2: {
        // replace a range with random characters
        let junk = '';
        for (let i = int(6); i >= 0; i--) junk += pick(ALPHABET);
        return text.slice(0, at) + junk + text.slice(at + length);
      }
      case 3: {
        // swap two tags
        const tags = [...text.matchAll(/<[^<>]*>/g)];
        if (tags.length < 2) return text;
        const [a, b] = [pick(tags), pick(tags)].sort((x, y) => (x.index ?? 0) - (y.index ?? 0));
        if (a === undefined || b === undefined || a.index === b.index) return text;
        const ai = a.index ?? 0;
        const bi = b.index ?? 0;
        return text.slice(0, ai) + b[0] + text.slice(ai + a[0].length, bi) + a[0] + text.slice(bi + b[0].length);
      }
      case 4: // insert a '<'
        return `${text.slice(0, at)}<${text.slice(at)}`;
      case 5: {
        // rename one tag (open or close) to another name of the format: structural, still well-formed-ish
        const tags = [...text.matchAll(/<(\/?)([a-z_]+)>/g)];
        if (tags.length === 0) return text;
        const tag = pick(tags);
        const index = tag.index ?? 0;
        return `${text.slice(0, index)}<${tag[1] ?? ''}${pick(NAMES)}>${text.slice(index + tag[0].length)}`;
      }
      case 6: {
        // replace one number with another, in or out of range
        const numbers = [...text.matchAll(/>(\d+)</g)];
        if (numbers.length === 0) return text;
        const number = pick(numbers);
        const index = (number.index ?? 0) + 1;
        return text.slice(0, index) + pick(NUMBERS) + text.slice(index + (number[1]?.length ?? 0));
      }
      default: {
        // copy a whole element (e.g. a second <service> or a second <port>) next to another
        const elements = [...text.matchAll(/<([a-z_]+)>[^<]*<\/\1>|<service>[\s\S]*?<\/service>/g)];
        if (elements.length === 0) return text;
        const element = pick(elements);
        const to = (pick(elements).index ?? 0);
        return text.slice(0, to) + element[0] + text.slice(to);
      }
    }
  }

  /** What any successfully parsed file must satisfy, whatever the input. */
  function checkInvariants(config: IConsumerConfig): void {
    const inRange = (value: number | undefined, min: number, max: number): boolean =>
      value === undefined || (Number.isInteger(value) && value >= min && value <= max);
    expect(inRange(config.listener.port, 1, 65535)).toBe(true);
    expect(['0.0.0.0', '127.0.0.1']).toContain(config.listener.bindHost);
    expect(config.services.length).toBeGreaterThan(0);
    const ids = new Set<string>();
    const ports = new Set<number>();
    for (const service of config.services) {
      expect(service.id).toMatch(/^[A-Za-z0-9._-]{1,64}$/);
      expect(ids.has(service.id.toLowerCase())).toBe(false);
      ids.add(service.id.toLowerCase());
      expect(inRange(service.edgePort, 1, 65535)).toBe(true);
      expect(ports.has(service.edgePort)).toBe(false);
      expect(service.edgePort).not.toBe(config.listener.port);
      ports.add(service.edgePort);
      expect(['0.0.0.0', '127.0.0.1']).toContain(service.bindAddress);
      expect(inRange(service.maxConnections, 1, 1_000_000)).toBe(true);
      expect(inRange(service.bufferBytes, 1024, 1_073_741_824)).toBe(true);
      expect(inRange(service.idleTimeoutSecs, 1, 86_400)).toBe(true);
      if (service.name !== undefined) expect(service.name.length).toBeGreaterThan(0);
    }
  }

  it('either parses a mutated file into a consistent config or throws ERR_INVALID_CONFIG naming the file', () => {
    const random = mulberry32(0xc0ffee);
    const outcomes = { parsed: 0, syntax: 0, content: 0 };
    for (let round = 0; round < 2000; round++) {
      let text = VALID;
      for (let count = 1 + Math.floor(random() * 3); count > 0; count--) text = mutate(text, random);
      let config: IConsumerConfig;
      try {
        config = parseConsumerXml(text, FILE);
      } catch (error) {
        if (!(error instanceof TunnelError) || error.code !== 'ERR_INVALID_CONFIG' || !error.message.startsWith(`${FILE}:`)) {
          throw new Error(`round ${round}: unexpected ${String(error)}\n--- input ---\n${JSON.stringify(text)}`, { cause: error });
        }
        if (/not well-formed XML|cannot parse XML|is not allowed:/.test(error.message)) outcomes.syntax++;
        else outcomes.content++;
        continue;
      }
      checkInvariants(config);
      outcomes.parsed++;
    }
    // The mutations must exercise all three paths, or the test proves little.
    expect(outcomes.parsed).toBeGreaterThan(50);
    expect(outcomes.syntax).toBeGreaterThan(50);
    expect(outcomes.content).toBeGreaterThan(50);
  });
});
