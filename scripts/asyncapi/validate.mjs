// Parse an AsyncAPI document with the official parser and print its diagnostics as JSON.
//
//   node scripts/asyncapi/validate.mjs topics/asyncapi.yaml
//
// Relative `$ref`s (the payload schemas) are read from disk, next to the document. Prints
// {"parser": VERSION, "diagnostics": [{severity, code, message, file, path, line}, ...]}, where
// `file` is relative to the document's folder and `path` and `line` are within that file.
// Exits 1 when a diagnostic is an error, 0 when none is, 2 when the document cannot be parsed.
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, relative, resolve } from 'node:path';

import { DiagnosticSeverity, Parser } from '@asyncapi/parser';

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information',
  [DiagnosticSeverity.Hint]: 'hint',
};

const [documentPath] = process.argv.slice(2);
if (!documentPath) {
  console.error('usage: node validate.mjs ASYNCAPI_DOCUMENT');
  process.exit(2);
}
const source = resolve(documentPath);
const { version } = createRequire(import.meta.url)('@asyncapi/parser/package.json');

let diagnostics;
try {
  ({ diagnostics } = await new Parser().parse(await readFile(source, 'utf8'), { source }));
} catch (error) {
  console.error(`cannot parse ${source}: ${error.stack ?? error}`);
  process.exit(2);
}
const report = diagnostics.map((d) => ({
  severity: SEVERITY[d.severity] ?? String(d.severity),
  code: d.code,
  message: d.message,
  file: relative(dirname(source), d.source ?? source),
  path: d.path.join('/'),
  line: d.range.start.line + 1,
}));
console.log(JSON.stringify({ parser: version, diagnostics: report }, null, 2));
process.exit(report.some((d) => d.severity === 'error') ? 1 : 0);
