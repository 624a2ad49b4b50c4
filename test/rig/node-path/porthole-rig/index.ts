// `require('porthole-rig')` for scripts run with `npm run rig -- exec FILE.js`: the helpers
// the project's own scenarios use. L1 finds it through NODE_PATH.
export { SerialConsole, ConsoleClosedError, ConsoleTimeoutError, type CommandResult } from '../../console';
export { consoleLogger, kitChecks, scenario, type KitFiles, type RigHost, type ScenarioContext } from '../../scenario';
export { STICKS, SECTOR, checkStickSector, stickSector } from '../../sticks';
export { FAT_STICK, fatStickDigests } from '../../fat-stick';
export { l1ProjectDir } from '../../paths';
