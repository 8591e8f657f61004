#!/usr/bin/env node
// Runs a command in a private network namespace with only loopback up, so tests that
// need the mesh's fixed ports (and chaos runs) can run beside `npm start` and cannot
// reach anything but this machine. Needs root (unshare -n); elsewhere it says so and
// runs the command in the host's network, where those ports must then be free.
import { spawnSync } from "node:child_process";

const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error("usage: in-netns.mjs <command> [args...]");
  process.exit(2);
}

function canUnshare() {
  if (process.env.RECSYS_IN_NETNS) return false; // already inside one
  if (process.getuid?.() !== 0) return false;
  return spawnSync("unshare", ["-n", "true"]).status === 0 && spawnSync("sh", ["-c", "command -v ip"]).status === 0;
}

let result;
if (canUnshare()) {
  result = spawnSync("unshare", ["-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", command, ...args], {
    stdio: "inherit",
    env: { ...process.env, RECSYS_IN_NETNS: "1" },
  });
} else {
  if (!process.env.RECSYS_IN_NETNS) {
    console.warn("in-netns: no private network namespace (needs root, unshare and ip); running in the host's network, so the mesh's ports must be free");
  }
  result = spawnSync(command, args, { stdio: "inherit" });
}
if (result.error) {
  console.error(`in-netns: ${result.error.message}`);
  process.exit(1);
}
process.exit(result.status ?? 1);
