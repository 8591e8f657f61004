import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { createValidator, type Violation } from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Reason } from "./reasons.js";

/**
 * Patterns written only with anchors, literals, character classes, groups,
 * alternation and repetition mean the same in RE2 and in a JavaScript RegExp with
 * the "u" flag (code points, not UTF-16 units). The validator runs those on V8's
 * native RegExp (compiled once each); a rule with any other pattern, or one V8
 * refuses, is checked again by protovalidate's own RE2 validator. Our rules'
 * patterns are all plain, and the JavaScript RE2 showed in request profiles (issue 16).
 */
const PLAIN_PATTERN = /^[\^$A-Za-z0-9_\-\[\](){}|?*+.,:]*$/;
const nativePatterns = new Map<string, RegExp>();

function nativeRegexMatch(pattern: string, against: string): boolean {
  let native = nativePatterns.get(pattern);
  if (native === undefined) {
    if (!PLAIN_PATTERN.test(pattern) || nativePatterns.size >= 1_000) throw new Error(`pattern ${pattern} needs RE2`);
    native = new RegExp(pattern, "u");
    nativePatterns.set(pattern, native);
  }
  return native.test(against);
}

const nativeValidator = createValidator({ regexMatch: nativeRegexMatch });
const re2Validator = createValidator();

function validate<D extends DescMessage>(schema: D, message: MessageShape<D>) {
  const result = nativeValidator.validate(schema, message);
  return result.kind === "error" ? re2Validator.validate(schema, message) : result;
}

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
  const result = validate(schema, message);
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
