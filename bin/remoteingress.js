#!/usr/bin/env node
// One entry point for both daemons (the container image's command): the first word, or
// REMOTEINGRESS_MODE when there is none, picks `hub` or `edge`; the rest goes to that program.
// The same as the remoteingress package's cli.js.
import { runCli } from '../packages/remoteingress/dist/index.js';

await runCli();
