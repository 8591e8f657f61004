// On-demand features: computed per request from its context, never stored.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Device, Platform, type RequestContext } from "../../gen/recsys/common/v1/common_pb.js";
import type { JsonFeatureValue } from "./registry.js";

const PLATFORMS: Record<Platform, string> = {
  [Platform.UNSPECIFIED]: "unknown",
  [Platform.IOS]: "ios",
  [Platform.ANDROID]: "android",
  [Platform.WEB]: "web",
  [Platform.OTHER]: "other",
};

const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/** Formatters are costly to build; time zones in real traffic are few. */
const formatters = new Map<string, Intl.DateTimeFormat>();

/** A formatter for the IANA time zone, or undefined when the zone is unknown. */
function formatterFor(timeZone: string): Intl.DateTimeFormat | undefined {
  let formatter = formatters.get(timeZone);
  if (!formatter) {
    try {
      formatter = new Intl.DateTimeFormat("en-US", { timeZone, hourCycle: "h23", hour: "numeric", minute: "numeric", weekday: "short" });
    } catch {
      return undefined;
    }
    if (formatters.size < 1_000) formatters.set(timeZone, formatter);
  }
  return formatter;
}

export function isKnownTimeZone(timeZone: string): boolean {
  return timeZone === "" || formatterFor(timeZone) !== undefined;
}

/**
 * The request view's features from a context. Time features use the context's
 * timestamp (the server's clock when unset) in its time zone (UTC when unset); the
 * caller has checked the zone with isKnownTimeZone.
 */
export function requestFeatures(context: RequestContext, nowMs: number): Map<string, JsonFeatureValue> {
  const at = context.timestamp ? timestampMs(context.timestamp) : nowMs;
  const parts = formatterFor(context.timeZone || "UTC")!.formatToParts(new Date(at));
  const part = (type: Intl.DateTimeFormatPartTypes) => parts.find((p) => p.type === type)?.value ?? "";
  const hour = Number(part("hour"));
  const dayOfWeek = WEEKDAYS.indexOf(part("weekday"));
  const angle = (2 * Math.PI * (hour + Number(part("minute")) / 60)) / 24;
  return new Map<string, JsonFeatureValue>([
    ["hour_of_day", String(hour)],
    ["hour_sin", Math.sin(angle)],
    ["hour_cos", Math.cos(angle)],
    ["day_of_week", String(dayOfWeek)],
    ["is_weekend", dayOfWeek >= 5],
    ["device_mobile", context.device === Device.MOBILE],
    ["device_desktop", context.device === Device.DESKTOP],
    ["device_tablet", context.device === Device.TABLET],
    ["platform", PLATFORMS[context.platform]],
    ["location_country", context.location.slice(0, 2)],
  ]);
}
