// Loads a pure renderer module (renderer/src/*.ts) into a unit test. The renderer is built by
// vite, which empties dist/renderer after tsc, so tsc's output of a renderer file is not there
// to import: the test transpiles the source itself. Only self-contained modules qualify
// (type-only imports, which vanish); a module that imports code is refused by name.
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import ts from 'typescript';
import { repoRoot } from './vm';

export function loadRendererModule<T>(relative: string): T {
  const file = path.join(repoRoot, 'renderer', 'src', relative);
  const { outputText } = ts.transpileModule(fs.readFileSync(file, 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
    fileName: file,
  });
  const module = { exports: {} as Record<string, unknown> };
  const refuse = (name: string): never => {
    throw new Error(`${relative} imports ${name} at run time; loadRendererModule takes modules with type-only imports`);
  };
  vm.runInThisContext(`(function (exports, require, module) {${outputText}\n})`, { filename: file })(module.exports, refuse, module);
  return module.exports as T;
}
