// `npm run pki`: the local PKI under .run/pki/ (scripts/lib/pki.ts says what is in it).
//   npx tsx scripts/pki.ts             create what is missing
//   npx tsx scripts/pki.ts --rotate    re-issue every service certificate in place
import { pathToFileURL } from "node:url";
import { ensurePki } from "./lib/pki.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const result = await ensurePki({ rotate: process.argv.includes("--rotate") });
  console.log(result.issued.length > 0 ? `${result.dir}: issued ${result.issued.join(", ")}` : `${result.dir}: every file is current`);
}
