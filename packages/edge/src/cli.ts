import { statusCommand, type IProgram } from 'remoteingress-core/cli';
import { edgeCommand } from './commands/edge.js';
import { edgeTokenCommand } from './commands/token.js';

/** `remoteingress-edge [token|status] …`; run it with `runProgram` from `remoteingress-core/cli`. */
export const edgeProgram: IProgram = {
  name: 'remoteingress-edge',
  main: edgeCommand,
  subcommands: { token: edgeTokenCommand, status: statusCommand('edge') },
};
