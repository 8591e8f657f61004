// The local mesh's listeners must never compete with the kernel for a port: a port
// inside the ephemeral range can be handed to an outgoing connection before the
// listener binds it (EADDRINUSE at random during start-up).
import { existsSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { localListeners } from "../envoy/topology.js";

const IANA_EPHEMERAL: [number, number] = [49152, 65535];

function machineEphemeralRange(): [number, number] | undefined {
  const file = "/proc/sys/net/ipv4/ip_local_port_range";
  if (!existsSync(file)) return undefined;
  const [low, high] = readFileSync(file, "utf8").trim().split(/\s+/).map(Number);
  return [low!, high!];
}

describe("local ports", () => {
  const listeners = localListeners();

  it("are unique", () => {
    const seen = new Map<number, string>();
    for (const { port, what } of listeners) {
      expect(seen.get(port), `${what} and ${seen.get(port)} share ${port}`).toBeUndefined();
      seen.set(port, what);
    }
    expect(listeners.length).toBeGreaterThan(20);
  });

  it("lie outside the IANA and Linux ephemeral ranges, and this machine's", () => {
    const ranges = [IANA_EPHEMERAL, [32768, 60999] as [number, number]];
    const machine = machineEphemeralRange();
    if (machine) ranges.push(machine);
    for (const { port, what } of listeners) {
      for (const [low, high] of ranges) expect(port < low || port > high, `${what} on ${port} is inside ${low}-${high}`).toBe(true);
    }
  });
});
