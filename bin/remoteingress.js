#!/usr/bin/env node
// One entry point for both daemons (the container image's command): the first word, or
// REMOTEINGRESS_MODE when there is none, picks `hub` or `edge`; the rest goes to that program.
import { runProgram } from '../packages/core/dist/cli.js';

const MODES = ['hub', 'edge'];
const HELP = `Usage: remoteingress hub [hub options]      (same as remoteingress-hub)
       remoteingress edge [edge options]    (same as remoteingress-edge)
       REMOTEINGRESS_MODE=hub|edge remoteingress [options]

Run "remoteingress hub --help" or "remoteingress edge --help" for the options of each.
`;

const argv = process.argv.slice(2);
let mode;
let rest;
if (MODES.includes(argv[0])) {
  [mode, ...rest] = argv;
} else if (argv.length === 0 || argv[0].startsWith('-')) {
  mode = process.env.REMOTEINGRESS_MODE || undefined;
  rest = argv;
}

if (mode === undefined && (argv[0] === '--help' || argv[0] === '-h')) {
  process.stdout.write(HELP);
} else if (mode === undefined || !MODES.includes(mode)) {
  const problem =
    mode !== undefined
      ? `REMOTEINGRESS_MODE = ${JSON.stringify(mode)}: must be hub or edge`
      : argv.length > 0 && !argv[0].startsWith('-')
        ? `unknown mode ${JSON.stringify(argv[0])}: the first word must be hub or edge`
        : 'missing mode: give hub or edge as the first word, or set REMOTEINGRESS_MODE';
  process.stderr.write(`remoteingress: error: ${problem}\n\n${HELP}`);
  process.exitCode = 2;
} else if (mode === 'hub') {
  const { hubProgram } = await import('../packages/hub/dist/cli.js');
  await runProgram(hubProgram, rest);
} else {
  const { edgeProgram } = await import('../packages/edge/dist/cli.js');
  await runProgram(edgeProgram, rest);
}
