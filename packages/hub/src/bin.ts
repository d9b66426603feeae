#!/usr/bin/env node
import { runProgram } from 'remoteingress-core/cli';
import { hubProgram } from './cli.js';

await runProgram(hubProgram, process.argv.slice(2));
