import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { renderAll } from "../scripts/render-envoy.js";
import { runCommand } from "../scripts/processes.js";
import { ROOT, tool } from "../scripts/tools.js";

const rendered = renderAll();

describe("Envoy configs rendered from envoy/topology.ts", () => {
  it("are committed up to date (npm run render)", () => {
    for (const [path, text] of rendered) {
      expect(readFileSync(join(ROOT, "envoy", path), "utf8"), `envoy/${path}`).toBe(text);
    }
  });

  it.each([...rendered.keys()])("envoy --mode validate accepts %s", async (path) => {
    const { code, stdout, stderr } = await runCommand(tool("envoy"), ["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", join(ROOT, "envoy", path)]);
    expect(stdout + stderr).toContain("OK");
    expect(code).toBe(0);
  });
});
