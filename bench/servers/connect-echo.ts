// The echo service served by @connectrpc/connect-node over h2c, for the
// server-runtime comparison against the kit's grpc-js server.
import { createServer } from "node:http2";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { echoService } from "../../services/echo/handlers.js";

const port = Number(process.env.GRPC_PORT ?? 0);
const echo = echoService();
const server = createServer(connectNodeAdapter({ routes: (router) => router.service(echo.service, echo.impl) }));
server.listen(port, "127.0.0.1", () => console.log(JSON.stringify({ msg: "listening", port })));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
