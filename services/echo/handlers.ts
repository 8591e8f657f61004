import { setTimeout as sleep } from "node:timers/promises";
import { EchoService } from "../../gen/recsys/echo/v1/echo_pb.js";
import { implement } from "../kit/index.js";

/** The cheapest real call through the kit: the baseline every benchmark compares to. It needs no deps. */
export function echoService() {
  return implement(EchoService, {
    async echo(request, ctx) {
      if (request.delayMs > 0) await sleep(request.delayMs, undefined, { signal: ctx.signal });
      return { message: request.message };
    },
  });
}
