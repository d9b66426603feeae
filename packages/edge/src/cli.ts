import type { IProgram } from 'remoteingress-core/cli';
import { edgeCommand } from './commands/edge.js';
import { edgeTokenCommand } from './commands/token.js';

/** `remoteingress-edge [token] …`; run it with `runProgram` from `remoteingress-core/cli`. */
export const edgeProgram: IProgram = {
  name: 'remoteingress-edge',
  main: edgeCommand,
  subcommands: { token: edgeTokenCommand },
};
