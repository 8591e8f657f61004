// Checks the contracts the way CI does (scripts/lib/contracts.ts):
//   npx tsx scripts/check-contracts.ts [root]
import { pathToFileURL } from "node:url";
import { checkContracts } from "./lib/contracts.js";
import { ROOT } from "./lib/tools.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const problems = checkContracts(process.argv[2] ?? ROOT);
  for (const p of problems) console.error(p);
  process.exit(problems.length ? 1 : 0);
}
