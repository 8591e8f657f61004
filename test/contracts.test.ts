import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { checkContracts } from "../scripts/lib/contracts.js";
import { ROOT } from "../scripts/lib/tools.js";

let copies: string[] = [];
afterEach(() => {
  copies.forEach((dir) => rmSync(dir, { recursive: true, force: true }));
  copies = [];
});

/** A copy of the contracts and gen/ to break on purpose. */
function copyOfRepo(): string {
  const dir = mkdtempSync(join(tmpdir(), "recsys-contracts-"));
  for (const entry of ["buf.yaml", "buf.gen.yaml", "proto", "gen"]) cpSync(join(ROOT, entry), join(dir, entry), { recursive: true });
  copies.push(dir);
  return dir;
}

describe("contracts", () => {
  it("pass buf lint, and gen/ is exactly what buf generate produces", () => {
    expect(checkContracts()).toEqual([]);
  });

  it("fail when gen/ is stale", () => {
    const dir = copyOfRepo();
    const proto = join(dir, "proto/recsys/echo/v1/echo.proto");
    writeFileSync(proto, readFileSync(proto, "utf8").replace("// An echo response.", "// An echo response.\n// changed"));
    expect(checkContracts(dir)).toEqual([expect.stringContaining("gen/recsys/echo/v1/echo_pb.ts is stale")]);
  });

  it("fail when buf lint fails", () => {
    const dir = copyOfRepo();
    const proto = join(dir, "proto/recsys/echo/v1/echo.proto");
    writeFileSync(proto, readFileSync(proto, "utf8").replace("message EchoResponse {", "message echo_response {").replace("returns (EchoResponse)", "returns (echo_response)"));
    expect(checkContracts(dir).join("\n")).toMatch(/buf lint failed[\s\S]*echo_response/);
  });
});
