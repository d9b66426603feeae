import { statusCommand, type IProgram } from 'remoteingress-core/cli';
import { hubCommand } from './commands/hub.js';
import { tokenCommand } from './commands/token.js';

/** `remoteingress-hub [token|status] …`; run it with `runProgram` from `remoteingress-core/cli`. */
export const hubProgram: IProgram = {
  name: 'remoteingress-hub',
  main: hubCommand,
  subcommands: { token: tokenCommand, status: statusCommand('hub') },
};
