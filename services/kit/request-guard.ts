import * as grpc from "@grpc/grpc-js";
import { MalformedRequest } from "./errors.js";
import { toServiceError } from "./grpc.js";
import type { Logger } from "./log.js";
import { rpcHandled } from "./metrics.js";

/**
 * A grpc-js server interceptor, the first step of every call on the server: a
 * client's unreadable request becomes INVALID_ARGUMENT, never the server's error.
 *
 * grpc-js answers a unary call with no message, a truncated one, or a second one
 * with UNIMPLEMENTED ("Received no request message ...", server.js handleUnary),
 * and Envoy counts that as a 5xx against the host. The guard holds a unary call's
 * message until the client half-closes, and answers those cases itself. Undecodable
 * messages arrive as a MalformedRequest (the deserializers never throw): for the
 * kit's services the pipeline answers them, with its span and metrics; for the
 * other services on the server (health, reflection) the guard does.
 *
 * @param pipelinePaths the kit's methods ("/recsys.echo.v1.EchoService/Echo")
 */
export function requestGuard(pipelinePaths: ReadonlySet<string>, log: Logger): grpc.ServerInterceptor {
  return (method, call) => {
    const inPipeline = pipelinePaths.has(method.path);
    const reject = (malformed: MalformedRequest) => {
      const [, service = "", name = ""] = method.path.split("/");
      if (inPipeline) rpcHandled.inc({ grpc_service: service, grpc_method: name, grpc_type: "unary", grpc_code: "INVALID_ARGUMENT" });
      log.debug({ method: method.path, problem: malformed.problem }, "malformed request");
      call.sendStatus(toServiceError(malformed.toError(), new Headers()));
    };

    if (method.requestStream) {
      if (inPipeline) return new grpc.ServerInterceptingCall(call);
      return new grpc.ServerInterceptingCall(call, {
        start: (next) =>
          next({ onReceiveMessage: (message, forward) => (message instanceof MalformedRequest ? reject(message) : forward(message)) }),
      });
    }

    let first: { message: unknown; forward: (message: unknown) => void } | undefined;
    return new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMessage(message, forward) {
            if (first) {
              reject(new MalformedRequest(method.path, "a unary call carries one request message; received a second one"));
              return;
            }
            first = { message, forward };
            call.startRead();
          },
          onReceiveHalfClose(forward) {
            if (!first) {
              reject(new MalformedRequest(method.path, "the request ended without a complete message (none, or a truncated frame)"));
              return;
            }
            if (first.message instanceof MalformedRequest && !inPipeline) {
              reject(first.message);
              return;
            }
            first.forward(first.message);
            forward();
          },
        }),
    });
  };
}
