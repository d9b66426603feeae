import type { IProgram } from 'remoteingress-core/cli';
import { edgeCommand } from './commands/edge.js';

/** `remoteingress-edge …`; run it with `runProgram` from `remoteingress-core/cli`. */
export const edgeProgram: IProgram = {
  name: 'remoteingress-edge',
  main: edgeCommand,
};
