// The Lua scripts of the feature service. Each runs atomically in Redis and touches
// keys of one hash slot only (see keys.ts), so they work unchanged on Redis Cluster.
import type { Result } from "ioredis";
import type { RedisScript } from "../kit/redis.js";
import { BUCKETS_PER_WINDOW } from "./registry.js";

/**
 * Ingest: KEYS[1] the stream, KEYS[2..] one dedupe key per event; ARGV[1] the dedupe
 * TTL (s), ARGV[2..] the events' payloads. Appends the events whose id is new, all in
 * one step. Returns {accepted, duplicates}.
 */
const ingestEvents = `
local accepted, duplicates = 0, 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
    accepted = accepted + 1
  else
    duplicates = duplicates + 1
  end
end
return {accepted, duplicates}
`;

/**
 * Apply: KEYS[1] the stream, KEYS[2..] the keys the ops name by index. ARGV: group,
 * event count, then per event its stream id and its ops; then the upkeep ops. Ops come
 * as one JSON array per event of [name, key index, args...] (see Op in
 * aggregation.ts): one argument per event instead of one per field, decoded by the
 * built-in cjson, since per-argument encoding in the client dominated the aggregator's
 * CPU and cjson decodes several times faster than splitting strings in Lua.
 *
 * An event's ops run only if XACK says its entry was still pending: the XACK is the
 * claim token. A worker that crashed after this script ran left nothing pending to
 * redo; one that crashed before it left the entries pending, to be reclaimed and
 * applied once; a slow worker racing a reclaimer finds them already acknowledged.
 * Returns one 1/0 per event: applied or not.
 */
const applyEvents = `
local function num(x) return string.format('%.17g', x) end

-- touch: the latest-event fields of a state hash, read and written once per event.
-- a: event time; b: session gap in ms ('' when the view has no session feature);
-- then (field, value) pairs set when this event is the latest one for them.
-- last: latest event time; s0/s1/sn: first and last event time and events of the current session.
local function touch(key, op)
  local a, b = op[3], op[4]
  local ts = tonumber(a)
  local fields = {'last', 's0', 's1', 'sn'}
  for j = 5, #op, 2 do fields[#fields + 1] = op[j] .. '@' end
  local current = redis.call('HMGET', key, unpack(fields))
  local set = {}
  local function put(field, value) set[#set + 1] = field; set[#set + 1] = value end
  local last = tonumber(current[1])
  if not last or ts > last then put('last', a) end
  if b ~= '' then
    local gap, first, latest, n = tonumber(b), tonumber(current[2]), tonumber(current[3]), tonumber(current[4])
    if not latest or ts > latest + gap then
      put('s0', a); put('s1', a); put('sn', 1)
    elseif ts >= first - gap then
      -- within (or adjoining) the current session; older events belong to none
      put('s0', num(math.min(first, ts))); put('s1', num(math.max(latest, ts))); put('sn', n + 1)
    end
  end
  for j = 5, #op, 2 do
    local at = tonumber(current[4 + (j - 3) / 2])
    if not at or ts >= at then put(op[j], op[j + 1]); put(op[j] .. '@', a) end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
end

local function run(op)
  local name, key, a, b, c = op[1], KEYS[op[2]], op[3], op[4], op[5]
  if name == 'hincr' then
    redis.call('HINCRBY', key, a, b)
  elseif name == 'hincrf' then
    redis.call('HINCRBYFLOAT', key, a, b)
  elseif name == 'touch' then
    touch(key, op)
  elseif name == 'zincr' then
    redis.call('ZINCRBY', key, b, a)
  elseif name == 'recent' then
    -- a: item, b: event time, c: how many items to keep
    if redis.call('ZADD', key, 'GT', b, a) == 1 then redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(c) + 1)) end
  elseif name == 'sadd' then
    redis.call('SADD', key, a)
  elseif name == 'pexpireat' then
    redis.call('PEXPIREAT', key, a)
  elseif name == 'tidy' then
    -- At most every c ms per state hash: delete counters whose bucket left every
    -- window ("sizeMs:type:bucket") and decayed scores older than yesterday
    -- ("d<halfLife>:day"), and push the key's expiry to b. A new key only gets both dates.
    local now = tonumber(a)
    local due = tonumber(redis.call('HGET', key, 'tidy@'))
    if due and now < due then return end
    if due then
      local dead = {}
      for _, field in ipairs(redis.call('HKEYS', key)) do
        local size, bucket = string.match(field, '^(%d+):%d+:(%d+)$')
        if size then
          if tonumber(bucket) < math.floor(now / tonumber(size)) - ${BUCKETS_PER_WINDOW} then dead[#dead + 1] = field end
        else
          local day = string.match(field, '^d%d+:(%d+)$')
          if day and tonumber(day) < math.floor(now / 86400000) - 1 then dead[#dead + 1] = field end
        end
      end
      if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
    end
    redis.call('HSET', key, 'tidy@', num(now + tonumber(c)))
    redis.call('PEXPIREAT', key, b)
  else
    error('unknown op ' .. name)
  end
end

local function runAll(json)
  for _, op in ipairs(cjson.decode(json)) do run(op) end
end

local group = ARGV[1]
local applied = {}
local i = 3
for e = 1, tonumber(ARGV[2]) do
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    runAll(ARGV[i + 1])
    applied[e] = 1
  else
    applied[e] = 0
  end
  i = i + 2
end
runAll(ARGV[i])
return applied
`;

/**
 * Write batch rows of one partition: KEYS the rows; ARGV three per row: its event time
 * (ms), the encoded row, when Redis deletes it (ms; 0: never). A row whose stored
 * event time is newer is kept, so re-running an old file never overwrites newer
 * values. Returns one 1 (written) or 0 (skipped as stale) per row.
 */
const writeRows = `
local written = {}
for i = 1, #KEYS do
  local t, row, deleteAt = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local current = redis.call('GET', KEYS[i])
  local stored = current and tonumber(string.match(current, '^{"t":(%-?%d+)'))
  if stored and stored > tonumber(t) then
    written[i] = 0
  else
    if deleteAt == '0' then
      redis.call('SET', KEYS[i], row)
    else
      redis.call('SET', KEYS[i], row, 'PXAT', deleteAt)
    end
    written[i] = 1
  end
end
return written
`;

/**
 * Read stream state of one partition: KEYS the entities' state hashes, each followed
 * by its recent-items set when ARGV[1] is 2. Returns the flat HGETALL (and ZRANGE
 * WITHSCORES) replies in key order: one round trip, one reply, for 200 entities.
 */
const readStates = `
local per = tonumber(ARGV[1])
local replies = {}
for i = 1, #KEYS, per do
  replies[#replies + 1] = redis.call('HGETALL', KEYS[i])
  if per == 2 then replies[#replies + 1] = redis.call('ZRANGE', KEYS[i + 1], 0, -1, 'WITHSCORES') end
end
return replies
`;

/**
 * Expire popular hours: KEYS[1] a partition's live popular set, KEYS[2..] hour buckets
 * (hashes item -> count) that left the window; ARGV[1] how many top items to return.
 * Each bucket that still exists is subtracted from the live set and deleted, in one
 * step, so an hour is subtracted exactly once (a late event recreating an old bucket
 * is subtracted with it next time). Returns the live set's top items with scores.
 */
const expirePopular = `
local live = KEYS[1]
for i = 2, #KEYS do
  local counts = redis.call('HGETALL', KEYS[i])
  for j = 1, #counts, 2 do
    if tonumber(redis.call('ZINCRBY', live, -tonumber(counts[j + 1]), counts[j])) <= 0 then redis.call('ZREM', live, counts[j]) end
  end
  if #counts > 0 then redis.call('DEL', KEYS[i]) end
end
return redis.call('ZRANGE', live, 0, tonumber(ARGV[1]) - 1, 'REV', 'WITHSCORES')
`;

declare module "ioredis" {
  interface RedisCommander<Context> {
    recsysIngestEvents(numKeys: number, ...args: string[]): Result<[number, number], Context>;
    recsysApplyEvents(numKeys: number, ...args: string[]): Result<number[], Context>;
    recsysWriteRows(numKeys: number, ...args: string[]): Result<number[], Context>;
    recsysReadStates(numKeys: number, ...args: string[]): Result<string[][], Context>;
    recsysExpirePopular(numKeys: number, ...args: string[]): Result<string[], Context>;
  }
}

/** The scripts as the commands a feature client registers (see the declarations above). */
export const featureScripts: Record<string, RedisScript> = {
  recsysIngestEvents: { lua: ingestEvents },
  recsysApplyEvents: { lua: applyEvents },
  recsysWriteRows: { lua: writeRows },
  recsysReadStates: { lua: readStates, readOnly: true },
  recsysExpirePopular: { lua: expirePopular },
};
