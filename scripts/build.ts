// `npm run build [-- --outdir <dir>]`: services/ and gen/ compiled to JavaScript
// (scripts/lib/build.ts); without --outdir into dist/<hash of the sources>/.
import { relative } from "node:path";
import { pathToFileURL } from "node:url";
import { compiledServices, compileServices } from "./lib/build.js";
import { ROOT } from "./lib/tools.js";

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const at = process.argv.indexOf("--outdir");
  if (at > 0) {
    const outdir = process.argv[at + 1];
    if (!outdir) throw new Error("--outdir needs a directory");
    await compileServices(outdir);
    console.log(`compiled services/ and gen/ into ${outdir}`);
  } else {
    console.log(`compiled services/ and gen/ into ${relative(ROOT, await compiledServices())}`);
  }
}
