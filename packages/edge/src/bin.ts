#!/usr/bin/env node
import { runProgram } from 'remoteingress-core/cli';
import { edgeProgram } from './cli.js';

await runProgram(edgeProgram, process.argv.slice(2));
