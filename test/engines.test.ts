// One Node story: every package in the lock file must accept every Node line the
// project supports, so `npm install` prints no EBADENGINE on any of them.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import semver from "semver";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8")) as {
  packages: Record<string, { engines?: { node?: string } | string[]; optional?: boolean }>;
};
/** The oldest release of each supported line. */
const lines = ["20.19.0", "22.13.0", "24.0.0"];

describe("Node versions", () => {
  it("the project's range is exactly the supported lines", () => {
    for (const version of lines) expect(semver.satisfies(version, pkg.engines.node), version).toBe(true);
    for (const version of ["18.20.0", "21.7.0", "23.0.0"]) expect(semver.satisfies(version, pkg.engines.node), version).toBe(false);
  });

  it("every locked package accepts every supported line", () => {
    const refusing: string[] = [];
    for (const [path, entry] of Object.entries(lock.packages)) {
      const range = Array.isArray(entry.engines) ? undefined : entry.engines?.node;
      if (!path || !range) continue;
      for (const version of lines) if (!semver.satisfies(version, range)) refusing.push(`${path} wants node ${range}, not ${version}`);
    }
    expect(refusing).toEqual([]);
  });

  it("the running Node is one of them", () => {
    expect(semver.satisfies(process.versions.node, pkg.engines.node), process.versions.node).toBe(true);
  });
});
