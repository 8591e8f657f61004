// The install paths a developer's machine never takes (a tool missing) run here, on a
// PATH that lacks the tool and into a temporary .tools/, so a broken path fails the
// suite instead of a newcomer's first `npm install`.
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";

const setup = join(import.meta.dirname, "..", "scripts", "setup.mjs");
const dirs: string[] = [];

/** A directory holding only sh and node, to be the whole PATH. */
function barePath(): string {
  const dir = mkdtempSync(join(tmpdir(), "setup-path-"));
  dirs.push(dir);
  for (const tool of ["sh", "node"]) {
    const found = spawnSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
    symlinkSync(found, join(dir, tool));
  }
  return dir;
}

function runSetup(path: string, steps: string) {
  const tools = mkdtempSync(join(tmpdir(), "setup-tools-"));
  dirs.push(tools);
  const env = { PATH: path, HOME: process.env.HOME ?? tools, RECSYS_TOOLS_DIR: tools };
  return spawnSync(process.execPath, [setup, "--only", steps], { encoding: "utf8", env, timeout: 60_000 });
}

afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe("setup on a machine without the tools", () => {
  it("names every missing tool and how to get it, and fails", () => {
    const result = runSetup(barePath(), "envoy,redis,go-tools");
    expect(result.status).toBe(1);
    expect(result.stderr).toContain("python3 not found");
    expect(result.stderr).toMatch(/ghz: Go is not installed/);
    if (process.getuid?.() !== 0) expect(result.stderr).toContain("redis-server not found");
    // The failures are the tools', not the script's own.
    expect(result.stderr).not.toMatch(/is not defined|TypeError|SyntaxError/);
  });

  it.each([
    { step: "redis", binary: "redis-server", install: "install -y -qq redis-server" },
    { step: "prometheus", binary: "prometheus", install: "install -y -qq --no-install-recommends prometheus" },
  ])("installs $binary with apt-get when it is missing and it may (root)", ({ step, binary, install }) => {
    const path = barePath();
    const log = join(path, "apt-get.log");
    // apt-get stands in for Debian's: it records its arguments and "installs" the
    // binary, so the steps after the install (stopping the system service, finding
    // the binary) run as they would.
    writeFileSync(
      join(path, "apt-get"),
      `#!/bin/sh\necho "$@" >> ${log}\nif [ "$1" = install ]; then printf '#!/bin/sh\\necho ${binary}\\n' > ${join(path, binary)}; /bin/chmod +x ${join(path, binary)}; fi\n`,
    );
    chmodSync(join(path, "apt-get"), 0o755);
    const result = runSetup(path, step);
    if (process.getuid?.() !== 0) {
      expect(result.status).toBe(1);
      expect(result.stderr).toContain(`${binary} not found: install it`);
      return;
    }
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    expect(readFileSync(log, "utf8").trim().split("\n")).toEqual(["update -qq", install]);
    expect(existsSync(join(path, binary))).toBe(true);
  });

  it("names what Zipkin's server and Prometheus need when they are missing", () => {
    const result = runSetup(barePath(), "zipkin,prometheus");
    expect(result.status).toBe(1);
    expect(result.stderr).toContain("zipkin: java not found");
    expect(result.stderr).toContain("prometheus not found: install it");
    expect(result.stderr).not.toMatch(/is not defined|TypeError|SyntaxError/);
  });

  it("fetches Zipkin's pinned server jar with Maven once, and names a missing mvn", () => {
    const path = barePath();
    const log = join(path, "mvn.log");
    writeFileSync(join(path, "java"), "#!/bin/sh\nexit 0\n");
    chmodSync(join(path, "java"), 0o755);
    const tools = mkdtempSync(join(tmpdir(), "setup-tools-"));
    dirs.push(tools);
    const env = { PATH: path, HOME: process.env.HOME ?? tools, RECSYS_TOOLS_DIR: tools };
    const zipkin = () => spawnSync(process.execPath, [setup, "--only", "zipkin"], { encoding: "utf8", env, timeout: 60_000 });
    const withoutMaven = zipkin();
    expect(withoutMaven.status).toBe(1);
    expect(withoutMaven.stderr).toContain("zipkin: mvn not found");
    // mvn stands in for Maven: it records its arguments and "copies" the artifact where it was asked to.
    writeFileSync(
      join(path, "mvn"),
      `#!/bin/sh\necho "$@" >> ${log}\nfor a in "$@"; do case "$a" in -DoutputDirectory=*) echo jar > "\${a#-DoutputDirectory=}/zipkin-server.jar";; esac; done\n`,
    );
    chmodSync(join(path, "mvn"), 0o755);
    for (let run = 0; run < 2; run++) {
      const result = zipkin();
      expect(result.stderr).toBe("");
      expect(result.status).toBe(0);
    }
    const calls = readFileSync(log, "utf8").trim().split("\n");
    expect(calls).toHaveLength(1);
    expect(calls[0]).toContain("dependency:copy -Dartifact=io.zipkin:zipkin-server:3.5.1:jar:exec");
    expect(readFileSync(join(tools, "zipkin", "zipkin-server-exec.jar"), "utf8")).toBe("jar\n");
  });

  it("refuses an unknown step by name", () => {
    const result = runSetup(barePath(), "envoy,nope");
    expect(result.status).toBe(2);
    expect(result.stderr).toContain("unknown step(s) nope");
  });
});
