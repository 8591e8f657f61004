import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { createValidator, type Violation } from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Reason } from "./reasons.js";

const validator = createValidator();

/** "events[3].event_id" from a protovalidate path. */
export function fieldPath(violation: Violation): string {
  let out = "";
  for (const element of violation.field) {
    switch (element.kind) {
      case "field":
      case "oneof":
      case "extension":
        out += (out ? "." : "") + element.name;
        break;
      case "list_sub":
        out += `[${element.index}]`;
        break;
      case "map_sub":
        out += `[${JSON.stringify(String(element.key))}]`;
        break;
    }
  }
  return out || "(message)";
}

/**
 * Checks a message against its protovalidate annotations. Returns an
 * INVALID_ARGUMENT error naming every bad field (message text and
 * google.rpc.BadRequest details), or undefined when the message is valid.
 */
export function validationError<D extends DescMessage>(schema: D, message: MessageShape<D>): ConnectError | undefined {
  const result = validator.validate(schema, message);
  if (result.kind === "valid") return undefined;
  if (result.kind === "error") {
    return new ConnectError(`validation rules failed to run: ${result.error.message}`, Code.Internal);
  }
  const violations = result.violations.map((v) => ({ field: fieldPath(v), description: v.message, reason: v.ruleId }));
  const text = violations.map((v) => `${v.field}: ${v.description}`).join("; ");
  return new ConnectError(`invalid ${schema.name}: ${text}`, Code.InvalidArgument, undefined, [
    { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: violations }) },
    { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason: Reason.InvalidArgument, domain: "recsys", metadata: { field: violations[0]?.field ?? "" } }) },
  ]);
}
