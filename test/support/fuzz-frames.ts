import { connect, constants, type ClientHttp2Session } from "node:http2";
import { ScalarType, toBinary, type DescField, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { EchoService } from "../../gen/recsys/echo/v1/echo_pb.js";
import { ExperimentService } from "../../gen/recsys/experiment/v1/experiment_pb.js";
import { FeatureService } from "../../gen/recsys/feature/v1/feature_pb.js";
import { PredictionService } from "../../gen/recsys/prediction/v1/prediction_pb.js";
import { RetrievalService } from "../../gen/recsys/retrieval/v1/retrieval_pb.js";
import { seededRandom } from "./random.js";

/**
 * Malformed and mutated gRPC requests, sent as raw HTTP/2 frames, for fuzzing any
 * address that speaks gRPC (an app, a sidecar, the edge). Seeded, so a failure
 * names the case that reproduces it.
 */

/** Every recsys service in gen/, plus health, which the edge routes too. */
export const allServices: DescService[] = [EchoService, ExperimentService, FeatureService, PredictionService, RetrievalService, Health];

export const methodPath = (method: DescMethod) => `/${method.parent.typeName}/${method.name}`;

type Random = () => number;
const int = (random: Random, below: number) => Math.floor(random() * below);
const randomBytes = (random: Random, length: number) => Buffer.from(Array.from({ length }, () => int(random, 256)));

function scalarValue(type: ScalarType, random: Random): unknown {
  switch (type) {
    case ScalarType.STRING:
      return `s${int(random, 1000)}`;
    case ScalarType.BYTES:
      return randomBytes(random, int(random, 8));
    case ScalarType.BOOL:
      return random() < 0.5;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return random() * 10;
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return BigInt(int(random, 100));
    default:
      return int(random, 100);
  }
}

function fill(message: ReflectMessage, random: Random, depth: number): void {
  for (const field of message.fields) {
    if (random() < 0.3) continue;
    fillField(message, field, random, depth);
  }
}

function fillField(message: ReflectMessage, field: DescField, random: Random, depth: number): void {
  const element = (kind: "scalar" | "enum" | "message", scalar: ScalarType | undefined, enumValues: number[], desc: DescMessage | undefined) => {
    if (kind === "enum") return enumValues[int(random, enumValues.length)] ?? 0;
    if (kind === "message") {
      const child = reflect(desc!);
      if (depth < 3) fill(child, random, depth + 1);
      return child;
    }
    return scalarValue(scalar!, random);
  };
  switch (field.fieldKind) {
    case "scalar":
      message.set(field, scalarValue(field.scalar, random));
      break;
    case "enum":
      message.set(field, element("enum", undefined, field.enum.values.map((v) => v.number), undefined));
      break;
    case "message":
      if (depth < 3) message.set(field, element("message", undefined, [], field.message));
      break;
    case "list": {
      const list = message.get(field);
      const values = field.listKind === "enum" ? field.enum.values.map((v) => v.number) : [];
      for (let i = 1 + int(random, 2); i > 0; i--) {
        if (field.listKind === "message" && depth >= 3) break;
        list.add(element(field.listKind, field.listKind === "scalar" ? field.scalar : undefined, values, field.listKind === "message" ? field.message : undefined));
      }
      break;
    }
    case "map": {
      if (field.mapKind === "message" && depth >= 3) break;
      const values = field.mapKind === "enum" ? field.enum.values.map((v) => v.number) : [];
      const key = scalarValue(field.mapKey, random);
      message.get(field).set(key, element(field.mapKind, field.mapKind === "scalar" ? field.scalar : undefined, values, field.mapKind === "message" ? field.message : undefined));
      break;
    }
  }
}

/** A well-formed message of this type with random field values (rules not guaranteed). */
export function randomMessage(schema: DescMessage, random: Random): Buffer {
  const message = reflect(schema);
  fill(message, random, 0);
  return Buffer.from(toBinary(schema, message.message));
}

/** A gRPC length-prefixed frame. */
export function frame(payload: Uint8Array, compressed = false, declaredLength = payload.length): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt8(compressed ? 1 : 0, 0);
  header.writeUInt32BE(declaredLength, 1);
  return Buffer.concat([header, payload]);
}

function varint(value: number): Buffer {
  const out: number[] = [];
  let v = value >>> 0;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  out.push(v);
  return Buffer.from(out);
}

const tag = (fieldNo: number, wireType: number) => varint((fieldNo << 3) | wireType);

/** Wire type a field is written with (2 for strings, bytes, messages, packed lists, maps). */
function wireTypeOf(field: DescField): number {
  if (field.fieldKind === "message" || field.fieldKind === "map" || field.fieldKind === "list") return 2;
  if (field.fieldKind === "enum") return 0;
  switch (field.scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return 2;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 1;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return 5;
    default:
      return 0;
  }
}

function encodedWithWireType(wireType: number, random: Random): Buffer {
  switch (wireType) {
    case 0:
      return varint(int(random, 1000));
    case 1:
      return randomBytes(random, 8);
    case 5:
      return randomBytes(random, 4);
    default: {
      const body = randomBytes(random, int(random, 6));
      return Buffer.concat([varint(body.length), body]);
    }
  }
}

export interface FuzzCase {
  /** What was sent, to reproduce a failure: "flipped-bits #3". */
  name: string;
  path: string;
  /** The whole request body: zero or more frames, possibly malformed. */
  body: Buffer;
  headers?: Record<string, string>;
}

/** Kinds of malformed request, each a function of the method and the generator. */
const kinds: Record<string, (method: DescMethod, random: Random) => Omit<FuzzCase, "name" | "path">> = {
  "random-frame": (_m, random) => ({ body: frame(randomBytes(random, int(random, 64))) }),
  "random-body": (_m, random) => ({ body: randomBytes(random, int(random, 64)) }),
  "flipped-bits": (method, random) => {
    const message = randomMessage(method.input, random);
    for (let i = 0; i < 1 + int(random, 3) && message.length > 0; i++) message[int(random, message.length)]! ^= 1 << int(random, 8);
    return { body: frame(message) };
  },
  "truncated-message": (method, random) => {
    const message = Buffer.concat([randomMessage(method.input, random), Buffer.from("0a0178", "hex")]);
    return { body: frame(message.subarray(0, int(random, message.length))) };
  },
  "truncated-frame": (method, random) => {
    const message = randomMessage(method.input, random);
    return { body: frame(message, false, message.length + 1 + int(random, 32)) };
  },
  "truncated-header": (_m, random) => ({ body: frame(Buffer.alloc(0)).subarray(0, 1 + int(random, 4)) }),
  "oversized-field": (method, random) => {
    const field = method.input.fields[int(random, method.input.fields.length)];
    const fieldNo = field?.number ?? 1;
    return { body: frame(Buffer.concat([randomMessage(method.input, random), tag(fieldNo, 2), varint(1_000_000 + int(random, 1_000_000)), randomBytes(random, 8)])) };
  },
  "unknown-fields": (method, random) => {
    const unknownNo = 1000 + int(random, 1000);
    const wireType = [0, 1, 2, 5][int(random, 4)]!;
    return { body: frame(Buffer.concat([randomMessage(method.input, random), tag(unknownNo, wireType), encodedWithWireType(wireType, random)])) };
  },
  "wrong-wire-type": (method, random) => {
    const field = method.input.fields[int(random, method.input.fields.length)];
    if (!field) return { body: frame(Buffer.concat([tag(1, 3)])) };
    const wrong = [0, 1, 2, 5].filter((w) => w !== wireTypeOf(field))[int(random, 3)]!;
    return { body: frame(Buffer.concat([randomMessage(method.input, random), tag(field.number, wrong), encodedWithWireType(wrong, random)])) };
  },
  "invalid-utf8": (method, random) => {
    const strings = method.input.fields.filter((f) => (f.fieldKind === "scalar" || f.fieldKind === "list") && f.scalar === ScalarType.STRING);
    const fieldNo = strings[int(random, strings.length)]?.number ?? 1;
    const bad = Buffer.from([0x61, [0xc3, 0xff, 0xed, 0xf8][int(random, 4)]!, 0x28]);
    return { body: frame(Buffer.concat([randomMessage(method.input, random), tag(fieldNo, 2), varint(bad.length), bad])) };
  },
  "two-messages": (method, random) => ({ body: Buffer.concat([frame(randomMessage(method.input, random)), frame(randomMessage(method.input, random))]) }),
  "zero-length": () => ({ body: frame(Buffer.alloc(0)) }),
  "no-message": () => ({ body: Buffer.alloc(0) }),
  "compressed-flag-without-encoding": (method, random) => ({ body: frame(randomMessage(method.input, random), true) }),
};

export const fuzzKinds = Object.keys(kinds);

/** `perKind` cases of every kind for one method, reproducible from `seed`. */
export function* fuzzCases(method: DescMethod, seed: number, perKind: number): Generator<FuzzCase> {
  const random = seededRandom(seed);
  for (let i = 0; i < perKind; i++) {
    for (const [kind, make] of Object.entries(kinds)) {
      yield { name: `${kind} #${i} (seed ${seed})`, path: methodPath(method), ...make(method, random) };
    }
  }
}

export interface FuzzOutcome {
  /** grpc-status from trailers (or a trailers-only answer); undefined when none arrived. */
  code: number | undefined;
  message: string;
  httpStatus: number | undefined;
  /** Response headers and trailers, e.g. grpc-status-details-bin. */
  metadata: Headers;
  /** Set when the stream or the connection failed instead of answering. */
  failure?: string;
}

/**
 * One HTTP/2 connection to a gRPC address, sending raw request bodies. A reset
 * stream or a lost connection is an outcome with `failure`, never a throw.
 */
export class RawGrpcClient {
  private session: ClientHttp2Session;
  private lost: string | undefined;

  constructor(readonly address: string) {
    this.session = this.open();
  }

  private open(): ClientHttp2Session {
    const session = connect(`http://${this.address}`);
    session.on("error", (err) => (this.lost = err.message));
    session.on("close", () => (this.lost ??= "connection closed"));
    return session;
  }

  /** Sends one call; the deadline travels as grpc-timeout and bounds the wait. */
  call(path: string, body: Buffer, headers: Record<string, string> = {}, timeoutMs = 5_000): Promise<FuzzOutcome> {
    if (this.lost !== undefined) {
      this.session.destroy();
      this.lost = undefined;
      this.session = this.open();
    }
    return new Promise((resolve) => {
      let httpStatus: number | undefined;
      let code: number | undefined;
      let message = "";
      const metadata = new Headers();
      const read = (h: Record<string, unknown>) => {
        for (const [key, value] of Object.entries(h)) if (!key.startsWith(":") && typeof value === "string") metadata.set(key, value);
        if (h["grpc-status"] !== undefined) code = Number(h["grpc-status"]);
        if (typeof h["grpc-message"] === "string") message = decodeURIComponent(h["grpc-message"]);
      };
      const stream = this.session.request({
        [constants.HTTP2_HEADER_METHOD]: "POST",
        [constants.HTTP2_HEADER_PATH]: path,
        "content-type": "application/grpc",
        te: "trailers",
        "grpc-timeout": `${timeoutMs}m`,
        ...headers,
      });
      const timer = setTimeout(() => stream.close(constants.NGHTTP2_CANCEL), timeoutMs + 2_000);
      stream.on("response", (h) => {
        httpStatus = Number(h[constants.HTTP2_HEADER_STATUS]);
        read(h);
      });
      stream.on("trailers", read);
      stream.on("data", () => undefined);
      stream.on("error", () => undefined);
      stream.on("close", () => {
        clearTimeout(timer);
        const failure = code === undefined ? `no grpc-status (rst ${stream.rstCode}${this.lost ? `, ${this.lost}` : ""})` : undefined;
        resolve({ code, message, httpStatus, metadata, ...(failure ? { failure } : {}) });
      });
      stream.end(body);
    });
  }

  close(): void {
    this.session.close();
  }
}

/** grpc status names by number, for reports. */
export const codeNames = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

export const codeName = (outcome: FuzzOutcome) => (outcome.code === undefined ? `FAILED (${outcome.failure})` : (codeNames[outcome.code] ?? String(outcome.code)));

/** Runs `work` over `items` with at most `concurrency` in flight. */
export async function runPool<T>(items: Iterable<T>, concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  const iterator = items[Symbol.iterator]();
  const worker = async () => {
    for (let next = iterator.next(); !next.done; next = iterator.next()) await work(next.value);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}
