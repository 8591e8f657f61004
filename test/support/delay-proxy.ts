// A TCP proxy on 127.0.0.1 that holds every chunk from the client for a settable delay
// before passing it on, in order: a slow link to one upstream, injected on purpose
// (the canary tests put it between prediction-v2 and its sidecar's egress listeners,
// so only v2's cache misses, which call the upstreams, slow down).
import { createServer, connect, type Socket } from "node:net";

export interface DelayProxy {
  /** host:port to give the client. */
  address: string;
  setDelay(ms: number): void;
  close(): Promise<void>;
}

export async function startDelayProxy(targetPort: number): Promise<DelayProxy> {
  let delayMs = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => [client, upstream].forEach((x) => x.destroy()));
    }
    // Each chunk leaves no earlier than its predecessor, so a delay change keeps the byte order.
    let lastRelease = 0;
    client.on("data", (chunk) => {
      const release = Math.max(Date.now() + delayMs, lastRelease);
      lastRelease = release;
      setTimeout(() => upstream.write(chunk), release - Date.now());
    });
    upstream.pipe(client);
    client.on("end", () => setTimeout(() => upstream.end(), Math.max(0, lastRelease - Date.now())));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${port}`,
    setDelay: (ms) => (delayMs = ms),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
