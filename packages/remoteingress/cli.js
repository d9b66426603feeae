#!/usr/bin/env node
// `node cli.js hub …` / `node cli.js edge …`, or REMOTEINGRESS_MODE=hub|edge with no first word.
import { runCli } from './dist/index.js';

await runCli();
