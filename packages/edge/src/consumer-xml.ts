/**
 * Reads edgerq's `consumer.xml`: the services an edge serves and where it listens for its hub.
 *
 * ```xml
 * <?xml version="1.0"?>
 * <service_consumer>
 *   <max_connections>100</max_connections>     <!-- optional default for every service -->
 *   <request_buffer>65536</request_buffer>      <!-- optional default, bytes -->
 *   <request_ttl>30</request_ttl>               <!-- optional default, seconds -->
 *   <listener>                                  <!-- required -->
 *     <inaddr_any>yes</inaddr_any>              <!-- optional yes|no, default no -->
 *     <port>9000</port>                         <!-- required: where this edge listens for its hub -->
 *   </listener>
 *   <services>                                  <!-- required, at least one <service> -->
 *     <service>
 *       <uuid>3f1c2a4e-…</uuid>                 <!-- required: a UUID or a name of [A-Za-z0-9._-], 1-64 chars -->
 *       <name>web</name>                        <!-- optional human name -->
 *       <inaddr_any>no</inaddr_any>             <!-- optional yes|no, default no -->
 *       <port>8080</port>                       <!-- required: public TCP port of this service -->
 *       <max_connections>5</max_connections>    <!-- optional, overrides the default -->
 *       <request_buffer>32768</request_buffer>  <!-- optional, overrides the default -->
 *       <request_ttl>10</request_ttl>           <!-- optional, overrides the default -->
 *     </service>
 *   </services>
 * </service_consumer>
 * ```
 *
 * Mapping to {@link IConsumerConfig}:
 * - `<listener>` → `listener`: `port`, and `bindHost` `0.0.0.0` when `inaddr_any` is yes, else `127.0.0.1`.
 * - each `<service>` → an {@link IConsumerService}: `uuid` → `id`, `name` → `name`, `port` → `edgePort`,
 *   `inaddr_any` → `bindAddress` (as for the listener), `max_connections` → `maxConnections`,
 *   `request_buffer` → `bufferBytes`, `request_ttl` → `idleTimeoutSecs`. A value given in the
 *   service wins over the top-level default; when neither is given the field is absent.
 *
 * The file is checked strictly, since a typo that is silently ignored (a misspelt
 * `<max_conections>`) would leave a service without the limit its author meant to set: unknown
 * elements, repeated elements, attributes, stray text and values that are not exactly a decimal
 * integer in range or `yes`/`no` are all errors. `<!DOCTYPE>` and other markup declarations are
 * refused before parsing: the file may come from anywhere, and this format needs no DTD or
 * entity definitions. Only XML's five predefined entities and character references are decoded.
 *
 * Every failure is a `TunnelError` with code `ERR_INVALID_CONFIG` whose message starts with the
 * file name and, where known, the line (`consumer.xml:12: …`, or `consumer.xml:12:5: …` for
 * syntax errors). Problems in the content are collected in one pass, so the author fixes the file
 * once; `issues` lists each, and `field`/`value` name the first one.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { XMLParser as TXMLParser } from 'fast-xml-parser';
import { TunnelError, describeValue, type IConfigIssue } from 'remoteingress-core';

/** One service the edge serves (one `<service>`). */
export interface IConsumerService {
  /** `<uuid>`: a UUID or a name of `[A-Za-z0-9._-]`, 1-64 characters; unique in the file. */
  id: string;
  /** `<name>`: a human-readable label, when given. */
  name?: string;
  /** `<port>`: the public TCP port the edge serves this service on. */
  edgePort: number;
  /** `0.0.0.0` when `<inaddr_any>` is yes, else `127.0.0.1`. */
  bindAddress: string;
  /** `<max_connections>`, from the service or the top-level default. */
  maxConnections?: number;
  /** `<request_buffer>` in bytes, from the service or the top-level default. */
  bufferBytes?: number;
  /** `<request_ttl>` in seconds, from the service or the top-level default. */
  idleTimeoutSecs?: number;
}

/** Everything `consumer.xml` says. */
export interface IConsumerConfig {
  /** `<listener>`: where this edge listens for its hub; `bindHost` is `0.0.0.0` or `127.0.0.1`. */
  listener: { port: number; bindHost: string };
  /** `<services>`, in file order; at least one. */
  services: IConsumerService[];
}

/** Bind address for `<inaddr_any>yes</inaddr_any>`: every IPv4 interface. */
const ANY_ADDRESS = '0.0.0.0';
/** Bind address for `<inaddr_any>no</inaddr_any>` or none: loopback only, the safe default. */
const LOOPBACK_ADDRESS = '127.0.0.1';

/** TCP ports are 16-bit; port 0 asks the OS for any free port, which is no use as a fixed public port. */
const MIN_PORT = 1;
const MAX_PORT = 65_535;
/** Zero connections would make the service unusable; at least one must be allowed. */
const MIN_CONNECTIONS = 1;
/**
 * Every connection holds at least one file descriptor, and Linux caps a process's descriptors
 * at `fs.nr_open` (1,048,576 by default): a larger limit could never be reached and is a typo.
 */
const MAX_CONNECTIONS = 1_000_000;
/**
 * 1 KiB: a smaller buffer cannot hold a PROXY protocol header (up to 536 bytes for v2) plus a
 * request line, so it is almost certainly a size meant in KiB written as bytes.
 */
const MIN_BUFFER_BYTES = 1024;
/**
 * 1 GiB (2^30): the buffer is per connection, so anything larger risks exhausting memory with a
 * handful of clients, and stays well below the 2^31-1 byte limit of 32-bit lengths in native code.
 */
const MAX_BUFFER_BYTES = 1_073_741_824;
/** A time-to-live of 0 would drop every connection at once; 1 second is the smallest useful value. */
const MIN_TTL_SECS = 1;
/** One day: a longer idle timeout is almost certainly milliseconds written as seconds. */
const MAX_TTL_SECS = 86_400;
/** Service ids: the same rule as the core's service ids, so an id can be passed on unchanged (a UUID fits it). */
const SERVICE_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
/** A `<name>` is a label for logs and status output; anything longer is a pasted blob, not a name. */
const MAX_NAME_LENGTH = 256;
/**
 * 16 MiB leaves room for a service on every one of the 65,534 other ports at ~250 bytes each;
 * a larger input is not a consumer.xml, and refusing it bounds the parser's work.
 */
const MAX_TEXT_LENGTH = 16 * 1024 * 1024;

const ROOT = 'service_consumer';
const DEFAULT_FIELDS = ['max_connections', 'request_buffer', 'request_ttl'] as const;
const ROOT_FIELDS = [...DEFAULT_FIELDS, 'listener', 'services'] as const;
const LISTENER_FIELDS = ['inaddr_any', 'port'] as const;
const SERVICE_FIELDS = ['uuid', 'name', 'inaddr_any', 'port', 'max_connections', 'request_buffer', 'request_ttl'] as const;

type TLimitField = (typeof DEFAULT_FIELDS)[number];

/** The range and wording for each number the format carries. */
interface INumberRule {
  min: number;
  max: number;
  /** Completes `"x" is not …`. */
  noun: string;
  /** Appended to the range, e.g. ` bytes`. */
  unit: string;
}

const PORT_RULE: INumberRule = { min: MIN_PORT, max: MAX_PORT, noun: 'a port', unit: '' };
const LIMIT_RULES: Record<TLimitField, INumberRule> = {
  max_connections: { min: MIN_CONNECTIONS, max: MAX_CONNECTIONS, noun: 'a valid connection limit', unit: '' },
  request_buffer: { min: MIN_BUFFER_BYTES, max: MAX_BUFFER_BYTES, noun: 'a valid buffer size', unit: ' bytes' },
  request_ttl: { min: MIN_TTL_SECS, max: MAX_TTL_SECS, noun: 'a valid time-to-live', unit: ' seconds' },
};
const LIMIT_KEYS: Record<TLimitField, 'maxConnections' | 'bufferBytes' | 'idleTimeoutSecs'> = {
  max_connections: 'maxConnections',
  request_buffer: 'bufferBytes',
  request_ttl: 'idleTimeoutSecs',
};

// ---------------------------------------------------------------------------------------------
// XML → a small element tree with line numbers
// ---------------------------------------------------------------------------------------------

/**
 * fast-xml-parser throws on elements named `__proto__`, `constructor` or `prototype` and renames
 * `toString`, `hasOwnProperty` and friends. Every element name gets this prefix on the way in
 * (through `transformTagName`) and loses it in {@link toElements}, so such names reach the
 * unknown-element check like any other and the library's own keys (`#text`, `:@`) can never
 * collide with an element. `=` cannot occur in an XML name. The library applies the transform
 * twice to self-closing tags, hence the idempotent form.
 */
const NAME_PREFIX = '=';
const TEXT_KEY = '#text';
const CDATA_KEY = '#cdata';
const ATTRIBUTES_KEY = ':@';
const ATTRIBUTE_PREFIX = '@_';

/**
 * fast-xml-parser, loaded the first time a document is parsed: loading it costs an edge ~9 MiB
 * of RSS, which an edge without consumer.xml does not pay. Its CommonJS build, so that the
 * (synchronous) parse functions can load it.
 */
let fxp: { parser: TXMLParser; metadata: symbol; validate: typeof import('fast-xml-parser').XMLValidator.validate } | undefined;
function xml(): NonNullable<typeof fxp> {
  if (fxp === undefined) {
    const { XMLParser, XMLValidator } = createRequire(import.meta.url)('fast-xml-parser') as typeof import('fast-xml-parser');
    fxp = { parser: new XMLParser(PARSER_OPTIONS), metadata: XMLParser.getMetaDataSymbol() as unknown as symbol, validate: XMLValidator.validate };
  }
  return fxp;
}

const PARSER_OPTIONS: ConstructorParameters<typeof TXMLParser>[0] = {
  // Keeps repeated elements, text and CDATA in document order. Every child list is an array
  // this way, so `<service>` (or a wrongly repeated `<port>`) needs no `isArray`.
  preserveOrder: true,
  captureMetaData: true, // start index of every element, for line numbers
  parseTagValue: false, // values stay strings: "08080" or "1e3" must not become numbers
  trimValues: false, // we trim values ourselves and need to see stray text in containers
  ignoreAttributes: false, // attributes are reported, not silently dropped
  attributeNamePrefix: ATTRIBUTE_PREFIX,
  processEntities: false, // no DOCTYPE entities, ever; predefined ones are decoded in decodeText
  htmlEntities: false,
  cdataPropName: CDATA_KEY, // CDATA content is literal, so it must not be entity-decoded
  commentPropName: false, // comments are dropped
  ignoreDeclaration: true,
  ignorePiTags: true,
  transformTagName: (name) => (name.startsWith(NAME_PREFIX) ? name : NAME_PREFIX + name),
};

interface IElement {
  name: string;
  /** 1-based line of the start tag, when the parser reported it. */
  line: number | undefined;
  attributes: string[];
  children: TContent[];
}

type TContent = { kind: 'element'; element: IElement } | { kind: 'text'; text: string; cdata: boolean };

/** `FILE:LINE:COL: message`, leaving out what is not known. */
function located(file: string, line: number | undefined, col: number | undefined, message: string): string {
  if (line === undefined) return `${file}: ${message}`;
  return col === undefined ? `${file}:${line}: ${message}` : `${file}:${line}:${col}: ${message}`;
}

function fatal(file: string, line: number | undefined, col: number | undefined, message: string, field: string, value?: unknown, cause?: unknown): TunnelError {
  return new TunnelError('ERR_INVALID_CONFIG', located(file, line, col, message), { field, value, cause });
}

/**
 * Maps a character index to a 1-based line and column, counting lines at `\n` as
 * fast-xml-parser's validator does (so `\r\n` files agree). Built once per document: looking up
 * every element's line by scanning from the start would be quadratic in a large file.
 */
class LineIndex {
  /** Index of the first character of each line. */
  private readonly starts: number[] = [0];

  constructor(text: string) {
    for (let at = text.indexOf('\n'); at !== -1; at = text.indexOf('\n', at + 1)) this.starts.push(at + 1);
  }

  positionOf(index: number): { line: number; col: number } {
    // The last line start at or before `index`.
    let low = 0;
    let high = this.starts.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if ((this.starts[middle] ?? 0) <= index) low = middle;
      else high = middle - 1;
    }
    return { line: low + 1, col: index - (this.starts[low] ?? 0) + 1 };
  }
}

/**
 * Finds the first markup declaration (`<!DOCTYPE`, `<!ENTITY`, …) outside comments, CDATA
 * sections, processing instructions and tags, walking the text as the parser does. The validator
 * accepts a DOCTYPE (and skips it, even inside an element), so this is what refuses one.
 */
function findDeclaration(text: string): number {
  let i = text.indexOf('<');
  while (i !== -1) {
    let end: number;
    if (text.startsWith('<!--', i)) end = endOf(text, '-->', i + 4);
    else if (text.startsWith('<![', i)) end = endOf(text, ']]>', i + 3);
    else if (text[i + 1] === '!') return i;
    else if (text[i + 1] === '?') end = endOf(text, '?>', i + 2);
    else end = endOfTag(text, i + 1);
    if (end === -1) return -1;
    i = text.indexOf('<', end);
  }
  return -1;
}

function endOf(text: string, terminator: string, from: number): number {
  const at = text.indexOf(terminator, from);
  return at === -1 ? -1 : at + terminator.length;
}

/** End of a start or end tag: the first `>` not inside a quoted attribute value. */
function endOfTag(text: string, from: number): number {
  let quote = '';
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (quote !== '') {
      if (c === quote) quote = '';
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '>') {
      return i + 1;
    }
  }
  return -1;
}

/** XML 1.0 `Char`: no C0 controls except tab/LF/CR, no lone surrogates, no U+FFFE/U+FFFF. */
const INVALID_CHAR = /[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/u;

function isXmlChar(codePoint: number): boolean {
  return (
    codePoint === 0x9 ||
    codePoint === 0xa ||
    codePoint === 0xd ||
    (codePoint >= 0x20 && codePoint <= 0xd7ff) ||
    (codePoint >= 0xe000 && codePoint <= 0xfffd) ||
    (codePoint >= 0x10000 && codePoint <= 0x10ffff)
  );
}

/** Parses `text` into the root element; everything wrong with it as XML is fatal. */
function parseDocument(text: string, file: string): IElement {
  if (text.length > MAX_TEXT_LENGTH) {
    throw fatal(file, undefined, undefined, `is ${text.length} characters long; a consumer.xml is at most ${MAX_TEXT_LENGTH}`, ROOT, text.length);
  }
  const lines = new LineIndex(text);
  const badChar = INVALID_CHAR.exec(text);
  if (badChar !== null) {
    const { line, col } = lines.positionOf(badChar.index);
    const codePoint = badChar[0].codePointAt(0) ?? 0;
    const shown = `U+${codePoint.toString(16).toUpperCase().padStart(4, '0')}`;
    throw fatal(file, line, col, `not well-formed XML: character ${shown} is not allowed in XML`, ROOT, shown);
  }

  let validation: ReturnType<NonNullable<typeof fxp>['validate']>;
  try {
    validation = xml().validate(text);
  } catch (error) {
    throw fatal(file, undefined, undefined, `not well-formed XML: ${(error as Error).message}`, ROOT, undefined, error);
  }
  if (validation !== true) {
    const { line, col, msg } = validation.err;
    // The validator leaves `col` out of some errors (e.g. "Start tag expected.").
    throw fatal(file, line, typeof col === 'number' ? col : undefined, `not well-formed XML: ${msg}`, ROOT);
  }

  const declaration = findDeclaration(text);
  if (declaration !== -1) {
    const { line, col } = lines.positionOf(declaration);
    const what = /^<!([A-Za-z]*)/.exec(text.slice(declaration, declaration + 20))?.[1] ?? '';
    throw fatal(
      file,
      line,
      col,
      `<!${what}> is not allowed: consumer.xml needs no DTD, and entity definitions from a file that may come from anywhere are refused`,
      ROOT,
      `<!${what}`,
    );
  }

  let parsed: unknown;
  try {
    parsed = xml().parser.parse(text);
  } catch (error) {
    throw fatal(file, undefined, undefined, `cannot parse XML: ${(error as Error).message}`, ROOT, undefined, error);
  }
  const top = toElements(parsed, lines, file);
  const roots: IElement[] = [];
  for (const item of top) {
    if (item.kind === 'element') roots.push(item.element);
    else if (item.text.trim() !== '') {
      throw fatal(file, undefined, undefined, `not well-formed XML: text ${describeValue(item.text.trim())} outside the root element`, ROOT);
    }
  }
  const [root, second] = roots;
  if (root === undefined) throw fatal(file, undefined, undefined, `not well-formed XML: no root element`, ROOT);
  if (second !== undefined) {
    throw fatal(file, second.line, undefined, `not well-formed XML: a second root element <${second.name}> after <${root.name}>`, ROOT, second.name);
  }
  return root;
}

/** Converts fast-xml-parser's `preserveOrder` output into {@link TContent} nodes. */
function toElements(nodes: unknown, lines: LineIndex, file: string): TContent[] {
  const unexpected = (): TunnelError => fatal(file, undefined, undefined, 'cannot parse XML: unexpected parser output', ROOT);
  if (!Array.isArray(nodes)) throw unexpected();
  const out: TContent[] = [];
  for (const node of nodes as unknown[]) {
    if (typeof node !== 'object' || node === null) throw unexpected();
    const entry = node as Record<string | symbol, unknown>;
    if (TEXT_KEY in entry) {
      out.push({ kind: 'text', text: String(entry[TEXT_KEY]), cdata: false });
      continue;
    }
    if (CDATA_KEY in entry) {
      const parts = entry[CDATA_KEY];
      const joined = Array.isArray(parts) ? parts.map((part) => String((part as Record<string, unknown>)[TEXT_KEY] ?? '')).join('') : '';
      out.push({ kind: 'text', text: joined, cdata: true });
      continue;
    }
    const key = Object.keys(entry).find((name) => name !== ATTRIBUTES_KEY);
    if (key === undefined) throw unexpected();
    const meta = entry[xml().metadata] as { startIndex?: unknown } | undefined;
    const start = meta?.startIndex;
    const attributes = entry[ATTRIBUTES_KEY];
    out.push({
      kind: 'element',
      element: {
        name: key.startsWith(NAME_PREFIX) ? key.slice(NAME_PREFIX.length) : key,
        line: typeof start === 'number' ? lines.positionOf(start).line : undefined,
        attributes:
          typeof attributes === 'object' && attributes !== null
            ? Object.keys(attributes).map((name) => (name.startsWith(ATTRIBUTE_PREFIX) ? name.slice(ATTRIBUTE_PREFIX.length) : name))
            : [],
        children: toElements(entry[key], lines, file),
      },
    });
  }
  return out;
}

const PREDEFINED_ENTITIES: Readonly<Record<string, string>> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/** Decodes XML's predefined entities and character references; anything else is a problem. */
function decodeText(raw: string): { text: string } | { problem: string } {
  let problem: string | undefined;
  const text = raw.replace(/&(#[0-9]+|#x[0-9A-Fa-f]+|[^;&\s]*);?/g, (match, body: string) => {
    if (!match.endsWith(';')) {
      problem ??= `"&" must be written as &amp; (at ${describeValue(match)})`;
      return match;
    }
    if (body.startsWith('#')) {
      const codePoint = body[1] === 'x' ? Number.parseInt(body.slice(2), 16) : Number.parseInt(body.slice(1), 10);
      if (isXmlChar(codePoint)) return String.fromCodePoint(codePoint);
      problem ??= `character reference ${match} is not an allowed XML character`;
      return match;
    }
    const decoded = PREDEFINED_ENTITIES[body];
    if (decoded !== undefined) return decoded;
    problem ??= `unknown entity ${match} (only &lt; &gt; &amp; &quot; &apos; and character references are allowed)`;
    return match;
  });
  return problem === undefined ? { text } : { problem };
}

// ---------------------------------------------------------------------------------------------
// The element tree → IConsumerConfig
// ---------------------------------------------------------------------------------------------

/** Collects every problem so the author sees them all at once; see {@link Issues.throwIfAny}. */
class Issues {
  readonly list: IConfigIssue[] = [];

  constructor(private readonly file: string) {}

  add(line: number | undefined, field: string, value: unknown, problem: string): void {
    this.list.push({ field, value, message: located(this.file, line, undefined, problem) });
  }

  throwIfAny(): void {
    const [first] = this.list;
    if (first === undefined) return;
    const message =
      this.list.length === 1
        ? first.message
        : `${this.file}: ${this.list.length} problems:\n${this.list.map((issue) => `  - ${issue.message}`).join('\n')}`;
    throw new TunnelError('ERR_INVALID_CONFIG', message, { field: first.field, value: first.value, issues: this.list });
  }
}

/** Where an element sits, for messages and `field`. */
interface IScope {
  /** Human wording, e.g. `<listener>` or `service "web" (uuid …)`. */
  label: string;
  /** `<service_consumer>/<services>/<service>`, as in unknown-element messages. */
  path: string;
  /** `service_consumer/services/service[2]`, for `TunnelError.field`. */
  field: string;
}

/** The children of a container element, by name; reports what does not belong there. */
function childrenOf(element: IElement, scope: IScope, allowed: readonly string[], repeatable: readonly string[], issues: Issues): Map<string, IElement[]> {
  checkAttributes(element, scope.label.startsWith('<') ? scope.label : `<${element.name}> of ${scope.label}`, scope.field, issues);
  const found = new Map<string, IElement[]>();
  let strayText = false;
  for (const child of element.children) {
    if (child.kind === 'text') {
      if (!strayText && child.text.trim() !== '') {
        strayText = true;
        issues.add(element.line, scope.field, child.text.trim(), `unexpected text ${describeValue(child.text.trim())} in ${scope.label} (it holds only elements)`);
      }
      continue;
    }
    const { name, line } = child.element;
    if (!allowed.includes(name)) {
      issues.add(line, `${scope.field}/${name}`, name, `unknown element <${name}> in ${scope.path} (expected one of: ${allowed.join(', ')})`);
      continue;
    }
    const list = found.get(name);
    if (list === undefined) {
      found.set(name, [child.element]);
    } else {
      if (!repeatable.includes(name)) {
        const first = list[0]?.line;
        issues.add(line, `${scope.field}/${name}`, name, `<${name}> appears more than once in ${scope.label}${first === undefined ? '' : ` (first at line ${first})`}`);
      }
      list.push(child.element);
    }
  }
  return found;
}

/** `subject` says which element, e.g. `<port> in <listener>`. */
function checkAttributes(element: IElement, subject: string, field: string, issues: Issues): void {
  if (element.attributes.length > 0) {
    issues.add(element.line, field, element.attributes, `${subject} must not have attributes (found: ${element.attributes.join(', ')})`);
  }
}

/** The trimmed text of a value element, or undefined (reported) when it is not plain text. */
function valueOf(element: IElement, subject: string, field: string, issues: Issues): string | undefined {
  checkAttributes(element, subject, field, issues);
  let text = '';
  for (const child of element.children) {
    if (child.kind === 'element') {
      issues.add(child.element.line ?? element.line, field, child.element.name, `${subject}: expected a value, found element <${child.element.name}>`);
      return undefined;
    }
    if (child.cdata) {
      text += child.text;
      continue;
    }
    const decoded = decodeText(child.text);
    if ('problem' in decoded) {
      issues.add(element.line, field, child.text.trim(), `${subject}: ${decoded.problem}`);
      return undefined;
    }
    text += decoded.text;
  }
  return text.trim();
}

/** The single element `name` among `children`, when present (repeats are reported by {@link childrenOf}). */
function single(children: Map<string, IElement[]>, name: string): IElement | undefined {
  return children.get(name)?.[0];
}

function readNumber(element: IElement, scope: IScope, rule: INumberRule, issues: Issues): number | undefined {
  const subject = `<${element.name}> in ${scope.label}`;
  const field = `${scope.field}/${element.name}`;
  const text = valueOf(element, subject, field, issues);
  if (text === undefined) return undefined;
  const value = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
  if (Number.isInteger(value) && value >= rule.min && value <= rule.max) return value;
  issues.add(element.line, field, text, `${subject}: ${describeValue(text)} is not ${rule.noun} (${rule.min}-${rule.max}${rule.unit})`);
  return undefined;
}

/** `<inaddr_any>` → a bind address; absent means no. */
function readBindAddress(element: IElement | undefined, scope: IScope, issues: Issues): string {
  if (element === undefined) return LOOPBACK_ADDRESS;
  const subject = `<${element.name}> in ${scope.label}`;
  const field = `${scope.field}/${element.name}`;
  const text = valueOf(element, subject, field, issues);
  if (text === undefined) return LOOPBACK_ADDRESS;
  const answer = text.toLowerCase();
  if (answer === 'yes') return ANY_ADDRESS;
  if (answer === 'no') return LOOPBACK_ADDRESS;
  issues.add(element.line, field, text, `${subject} must be yes or no, got ${describeValue(text)}`);
  return LOOPBACK_ADDRESS;
}

function readLimits(children: Map<string, IElement[]>, scope: IScope, issues: Issues): Partial<Record<TLimitField, number>> {
  const limits: Partial<Record<TLimitField, number>> = {};
  for (const name of DEFAULT_FIELDS) {
    const element = single(children, name);
    if (element === undefined) continue;
    const value = readNumber(element, scope, LIMIT_RULES[name], issues);
    if (value !== undefined) limits[name] = value;
  }
  return limits;
}

interface IServiceRead {
  service: IConsumerService;
  idLine: number | undefined;
  portLine: number | undefined;
  label: string;
  field: string;
}

function readService(element: IElement, index: number, defaults: Partial<Record<TLimitField, number>>, issues: Issues): IServiceRead | undefined {
  const path = `<${ROOT}>/<services>/<service>`;
  const field = `${ROOT}/services/service[${index + 1}]`;
  const ordinal = `service #${index + 1}`;
  const children = childrenOf(element, { label: ordinal, path, field }, SERVICE_FIELDS, [], issues);

  // The id and name first: every later message names the service by them.
  const uuidElement = single(children, 'uuid');
  let id: string | undefined;
  if (uuidElement === undefined) {
    issues.add(element.line, `${field}/uuid`, undefined, `${ordinal} has no <uuid>`);
  } else {
    const text = valueOf(uuidElement, `<uuid> in ${ordinal}`, `${field}/uuid`, issues);
    if (text !== undefined && SERVICE_ID_PATTERN.test(text)) id = text;
    else if (text !== undefined) {
      issues.add(uuidElement.line, `${field}/uuid`, text, `<uuid> in ${ordinal}: ${describeValue(text)} is not a UUID or a name of 1-64 characters of A-Z a-z 0-9 . _ -`);
    }
  }
  const nameElement = single(children, 'name');
  let name: string | undefined;
  if (nameElement !== undefined) {
    const text = valueOf(nameElement, `<name> in ${ordinal}`, `${field}/name`, issues);
    if (text !== undefined && text.length >= 1 && text.length <= MAX_NAME_LENGTH && !/[\u0000-\u001f\u007f]/.test(text)) name = text;
    else if (text !== undefined) {
      issues.add(nameElement.line, `${field}/name`, text, `<name> in ${ordinal}: ${describeValue(text)} must be 1-${MAX_NAME_LENGTH} characters without control characters`);
    }
  }
  const label =
    name !== undefined && id !== undefined
      ? `service ${describeValue(name)} (uuid ${id})`
      : name !== undefined
        ? `service ${describeValue(name)} (${ordinal})`
        : id !== undefined
          ? `service ${id}`
          : ordinal;
  const scope: IScope = { label, path, field };

  const bindAddress = readBindAddress(single(children, 'inaddr_any'), scope, issues);
  const portElement = single(children, 'port');
  let edgePort: number | undefined;
  if (portElement === undefined) issues.add(element.line, `${field}/port`, undefined, `${label} has no <port>`);
  else edgePort = readNumber(portElement, scope, PORT_RULE, issues);
  const own = readLimits(children, scope, issues);

  if (id === undefined || edgePort === undefined) return undefined;
  const service: IConsumerService = { id, edgePort, bindAddress };
  if (name !== undefined) service.name = name;
  for (const limit of DEFAULT_FIELDS) {
    // A service's invalid value was reported; it does not fall back to the default.
    const given = single(children, limit) !== undefined;
    const value = given ? own[limit] : defaults[limit];
    if (value !== undefined) service[LIMIT_KEYS[limit]] = value;
  }
  return { service, idLine: uuidElement?.line, portLine: portElement?.line, label, field };
}

function lineNote(line: number | undefined): string {
  return line === undefined ? '' : ` at line ${line}`;
}

/**
 * Parses the text of a `consumer.xml`. `file` names it in every error message (use the path it
 * was read from). Throws `TunnelError` `ERR_INVALID_CONFIG` on any problem.
 */
export function parseConsumerXml(text: string, file: string): IConsumerConfig {
  // A byte order mark is not part of the document; dropping it keeps columns right on line 1.
  const source = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const root = parseDocument(source, file);
  if (root.name !== ROOT) {
    throw fatal(file, root.line, undefined, `the root element must be <${ROOT}>, found <${root.name}>`, ROOT, root.name);
  }

  const issues = new Issues(file);
  const rootScope: IScope = { label: `<${ROOT}>`, path: `<${ROOT}>`, field: ROOT };
  const top = childrenOf(root, rootScope, ROOT_FIELDS, [], issues);
  const defaults = readLimits(top, rootScope, issues);

  // <listener>
  let listener: IConsumerConfig['listener'] | undefined;
  let listenerPortLine: number | undefined;
  const listenerElement = single(top, 'listener');
  if (listenerElement === undefined) {
    issues.add(root.line, `${ROOT}/listener`, undefined, `<${ROOT}> has no <listener>`);
  } else {
    const scope: IScope = { label: '<listener>', path: `<${ROOT}>/<listener>`, field: `${ROOT}/listener` };
    const children = childrenOf(listenerElement, scope, LISTENER_FIELDS, [], issues);
    const bindHost = readBindAddress(single(children, 'inaddr_any'), scope, issues);
    const portElement = single(children, 'port');
    if (portElement === undefined) issues.add(listenerElement.line, `${scope.field}/port`, undefined, '<listener> has no <port>');
    const port = portElement === undefined ? undefined : readNumber(portElement, scope, PORT_RULE, issues);
    if (port !== undefined) listener = { port, bindHost };
    listenerPortLine = portElement?.line;
  }

  // <services>
  const read: IServiceRead[] = [];
  const servicesElement = single(top, 'services');
  if (servicesElement === undefined) {
    issues.add(root.line, `${ROOT}/services`, undefined, `<${ROOT}> has no <services>`);
  } else {
    const scope: IScope = { label: '<services>', path: `<${ROOT}>/<services>`, field: `${ROOT}/services` };
    const serviceElements = childrenOf(servicesElement, scope, ['service'], ['service'], issues).get('service') ?? [];
    if (serviceElements.length === 0) issues.add(servicesElement.line, `${scope.field}/service`, undefined, '<services> has no <service>');
    serviceElements.forEach((element, index) => {
      const service = readService(element, index, defaults, issues);
      if (service !== undefined) read.push(service);
    });
  }

  // Across services: unique ids (ignoring case, as UUIDs are case-insensitive) and ports.
  const byId = new Map<string, IServiceRead>();
  const byPort = new Map<number, IServiceRead>();
  for (const entry of read) {
    const { service } = entry;
    const key = service.id.toLowerCase();
    const sameId = byId.get(key);
    if (sameId === undefined) byId.set(key, entry);
    else {
      issues.add(
        entry.idLine,
        `${entry.field}/uuid`,
        service.id,
        `duplicate <uuid> ${describeValue(service.id)}: ${entry.label}${lineNote(entry.idLine)} and ${sameId.label}${lineNote(sameId.idLine)}`,
      );
    }
    const samePort = byPort.get(service.edgePort);
    if (samePort === undefined) byPort.set(service.edgePort, entry);
    else {
      issues.add(
        entry.portLine,
        `${entry.field}/port`,
        service.edgePort,
        `<port> ${service.edgePort} of ${entry.label} is already used by ${samePort.label}${lineNote(samePort.portLine)}`,
      );
    }
    if (listener !== undefined && service.edgePort === listener.port) {
      issues.add(entry.portLine, `${entry.field}/port`, service.edgePort, `<port> ${service.edgePort} of ${entry.label} is the <listener> port${lineNote(listenerPortLine)}`);
    }
  }

  issues.throwIfAny();
  // No issues means the listener and every service were read.
  if (listener === undefined) throw fatal(file, root.line, undefined, `<${ROOT}> has no <listener>`, `${ROOT}/listener`);
  return { listener, services: read.map((entry) => entry.service) };
}

/** Reads and parses a `consumer.xml`; a read failure names the path. */
export async function readConsumerXml(path: string): Promise<IConsumerConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new TunnelError('ERR_INVALID_CONFIG', `${path}: cannot read consumer.xml: ${(error as Error).message}`, {
      field: 'consumer.xml',
      value: path,
      cause: error,
    });
  }
  return parseConsumerXml(text, path);
}
