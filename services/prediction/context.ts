import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Device, type RequestContext } from "../../gen/recsys/common/v1/common_pb.js";
import { invalidArgument } from "../kit/index.js";

/** Who asks, in which context: what the upstream readers (features, candidates, variants) are given. */
export interface UserRequest {
  userId: string;
  context: RequestContext | undefined;
}

/** Hours per cache bucket: answers computed at 09:10 serve until 11:59 (local time). */
const HOURS_PER_BUCKET = 3;

const hourFormats = new Map<string, Intl.DateTimeFormat>();

/** A formatter giving the local hour and minute in a time zone (undefined for an unknown zone). */
function hourFormat(timeZone: string): Intl.DateTimeFormat | undefined {
  let format = hourFormats.get(timeZone);
  if (!format) {
    try {
      format = new Intl.DateTimeFormat("en-GB", { timeZone: timeZone || "UTC", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    } catch {
      return undefined;
    }
    hourFormats.set(timeZone, format);
  }
  return format;
}

/** INVALID_ARGUMENT on `field` unless the time zone is empty (UTC) or a known IANA zone. */
export function checkTimeZone(timeZone: string, field: string): void {
  if (!hourFormat(timeZone)) throw invalidArgument(field, `unknown IANA time zone "${timeZone}"`);
}

/** Local time of day in hours [0, 24) of the request (its timestamp, or now) in its time zone. */
function localHour(context: RequestContext | undefined, nowMs = Date.now()): number {
  const at = context?.timestamp ? timestampMs(context.timestamp) : nowMs;
  if (!context?.timeZone) {
    // UTC, the common case: plain arithmetic, no Intl formatting on the hot path.
    const date = new Date(at);
    return date.getUTCHours() + date.getUTCMinutes() / 60;
  }
  const format = hourFormat(context?.timeZone ?? "") ?? hourFormat("")!;
  const parts = format.formatToParts(new Date(at));
  const hour = Number(parts.find((p) => p.type === "hour")!.value);
  const minute = Number(parts.find((p) => p.type === "minute")!.value);
  return hour + minute / 60;
}

/**
 * The part of the context that changes the answer, as a cache key part: the device
 * (one-hot model features) and the local time-of-day bucket (hour_sin/hour_cos).
 * Platform, location and session do not reach the rankers, so they do not split the cache.
 */
export function contextBucket(context: RequestContext | undefined, nowMs = Date.now()): string {
  const device = Device[context?.device ?? Device.UNSPECIFIED].toLowerCase();
  return `${device}.h${Math.floor(localHour(context, nowMs) / HOURS_PER_BUCKET) * HOURS_PER_BUCKET}`;
}

/**
 * The request's on-demand features the rankers use, computed here with the feature
 * service's definitions (registry view "request"), so a user read needs no context.
 */
export function localRequestFeatures(context: RequestContext | undefined, nowMs = Date.now()): Record<string, number> {
  const angle = (2 * Math.PI * localHour(context, nowMs)) / 24;
  const device = context?.device ?? Device.UNSPECIFIED;
  return {
    hour_sin: Math.sin(angle),
    hour_cos: Math.cos(angle),
    device_mobile: device === Device.MOBILE ? 1 : 0,
    device_desktop: device === Device.DESKTOP ? 1 : 0,
    device_tablet: device === Device.TABLET ? 1 : 0,
  };
}
