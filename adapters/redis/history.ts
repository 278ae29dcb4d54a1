import { randomBytes } from "node:crypto";
import { MembershipError, type MembershipStore } from "../contract.js";
import { followMemberships } from "../history/follow.js";
import type {
  HistoryMark,
  HistoryMessage,
  HistoryRead,
  MessageHistory,
  Position,
} from "../history/history.js";
import type { HistoryLimits } from "../history/memory.js";
import { Listeners } from "../listeners.js";
import { assertCount, assertName, isValidName } from "../validate.js";
import {
  RedisConnections,
  type RedisTarget,
  readMessage,
  redisUnavailable,
  within,
} from "./client.js";

export interface RedisHistorySettings extends HistoryLimits {
  /** The store whose changes are marked (see `followMemberships`). */
  store: MembershipStore;
  /** Prefix of every key and of the channel. Default `hub-membership:history`. */
  prefix?: string;
  /** How long a command may take before it fails. Default 2 s. */
  timeoutMs?: number;
  /** Called once per Redis outage. Default: a process warning. */
  onError?: (error: unknown) => void;
}

export type RedisHistoryOptions = RedisTarget & RedisHistorySettings;

/** The epoch, made anew if Redis lost it (a flush, a restart without persistence). */
const EPOCH = `local epoch = redis.call('GET', KEYS[2])
if not epoch then epoch = ARGV[1]; redis.call('SET', KEYS[2], epoch) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/**
 * Appends and announces in one step: the channel's order is the stream's, so every server
 * delivers a group's messages in position order. Trimmed by count and by age; a quiet stream
 * expires.
 */
const PUBLISH = `${EPOCH}
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[5])
redis.call('XTRIM', KEYS[1], 'MINID', '~', tostring(now - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], cjson.encode({epoch, id, ARGV[6]}) .. '\\n' .. ARGV[5])
return {epoch, id}`;

/**
 * A mark goes only into a group that has entries: until a message comes after it, a mark changes
 * no replay, and a user who lost a group regains it only by a grant, marked after that message.
 */
const MARK = `${EPOCH}
if redis.call('EXISTS', KEYS[1]) == 0 then return {epoch, '0-0'} end
return {epoch, redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 't', ARGV[3], 'u', ARGV[4])}`;

/** Positions before now are not provably complete any more (a later reset only moves it on). */
const RESET = `${EPOCH}
local reset = (now + 1) .. '-0'
redis.call('SET', KEYS[3], reset)
return reset`;

const NOW = `${EPOCH}
return {epoch, now}`;

/**
 * The stream's state and its entries after a position, in one step. Past the count, the newest
 * entries (a replay's tail: its marks are what decide). Trimming shows as `entries-added` past
 * `length`; what was trimmed came before the first entry kept (max-deleted-entry-id is not kept
 * up by MAXLEN trimming in Redis 7.0).
 */
const READ = `${EPOCH}
local reset = redis.call('GET', KEYS[3]) or '0-0'
if redis.call('EXISTS', KEYS[1]) == 0 then return {epoch, reset, now, '', '0-0', 0, 0, {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local first, last, added, length = '', '0-0', 0, 0
for i = 1, #info, 2 do
  local key, value = info[i], info[i + 1]
  if key == 'first-entry' and value then first = value[1] end
  if key == 'last-generated-id' then last = value end
  if key == 'entries-added' then added = value end
  if key == 'length' then length = value end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
local cut = 0
if #entries >= tonumber(ARGV[3]) then
  cut = 1
  local tail = redis.call('XREVRANGE', KEYS[1], '+', '(' .. ARGV[2], 'COUNT', ARGV[3])
  entries = {}
  for i = #tail, 1, -1 do entries[#entries + 1] = tail[i] end
end
local trimmed = 0
if added > length then trimmed = 1 end
return {epoch, reset, now, first, last, trimmed, cut, entries}`;

/** The newest entries, newest first, up to ARGV[2]; with the first id kept and the last reset. */
const RECENT = `${EPOCH}
local reset = redis.call('GET', KEYS[3]) or '0-0'
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[2])
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = ''
if #oldest > 0 then first = oldest[1][1] end
return {epoch, reset, first, entries}`;

type StreamId = readonly [ms: bigint, seq: bigint];
type Entry = [id: string, fields: Array<string | Buffer>];
type ReadReply = [
  epoch: string,
  reset: string,
  now: number,
  first: string,
  last: string,
  trimmed: number,
  cut: number,
  entries: Entry[],
];

const MAX_SEQ = 18446744073709551615n;
const POSITION = /^([A-Za-z0-9_-]{1,32})\.(\d{1,20})-(\d{1,20})$/;

/**
 * A {@link MessageHistory} on Redis, shared by every server on it: one stream per group (entry ids
 * from Redis's clock, one sequencer) and one pub/sub channel that every server subscribes to.
 * A message is appended and announced in one script, so the channel delivers each group's
 * messages in stream order; a server's own messages come back through it too.
 *
 * Memory: about 100 bytes per entry on top of the payload (a stream entry), and one small key
 * (the epoch, the last reset). A server that loses its subscription misses what was announced
 * meanwhile, as pub/sub does: reported through `onError`, and its clients recover it when they
 * next reconnect.
 */
export class RedisHistory implements MessageHistory {
  readonly inProcess = false;
  readonly #redis: RedisConnections;
  readonly #prefix: string;
  readonly #channel: string;
  readonly #epochKey: string;
  readonly #resetKey: string;
  readonly #maxEntries: string;
  readonly #maxAgeMs: number;
  readonly #timeoutMs: number;
  readonly #onError: (error: unknown) => void;
  readonly #listeners = new Listeners<HistoryMessage>();
  readonly #barriers = new Map<string, () => void>();
  readonly #unfollow: () => void;
  /** A proposal for the epoch, used only if Redis has none. */
  readonly #newEpoch = randomBytes(6).toString("base64url");
  #subscribed: Promise<unknown> | undefined;
  /** The epoch Redis last said: positions of any other come first. */
  #epoch = "";
  /** A mark or a reset did not go through: no read is complete until a reset does. */
  #owed = false;
  #failing = false;

  constructor(options: RedisHistoryOptions) {
    this.#prefix = options.prefix ?? "hub-membership:history";
    this.#channel = `${this.#prefix}:messages`;
    this.#epochKey = `${this.#prefix}:epoch`;
    this.#resetKey = `${this.#prefix}:reset`;
    this.#maxEntries = String(options.maxEntries ?? 2_000);
    this.#maxAgeMs = options.maxAgeMs ?? 600_000;
    this.#timeoutMs = options.timeoutMs ?? 2_000;
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: Redis history: ${String(error)}`));
    this.#redis = new RedisConnections(options, (error) => this.#report(error));
    this.#unfollow = followMemberships(options.store, this);
  }

  /** Subscribes; resolves once messages published from now on are delivered here. */
  start(): Promise<unknown> {
    this.#subscribed ??= this.#redis
      .own()
      .then((subscriber) =>
        subscriber.subscribe(this.#channel, (message) => this.#receive(message), true),
      )
      .catch((error: unknown) => {
        this.#subscribed = undefined;
        throw redisUnavailable(error);
      });
    return this.#subscribed;
  }

  async publish(group: string, payload: Buffer): Promise<Position> {
    assertName("group", group);
    const [epoch, id] = (await this.#call(PUBLISH, group, [
      this.#maxEntries,
      String(this.#maxAgeMs),
      this.#channel,
      payload,
      group,
    ])) as [string, string];
    this.#epoch = epoch;
    return `${epoch}.${id}`;
  }

  subscribe(listener: (message: HistoryMessage) => void): () => void {
    void this.start().catch((error: unknown) => this.#report(error));
    return this.#listeners.add(listener);
  }

  async settled(): Promise<void> {
    await this.start();
    const token = randomBytes(9).toString("base64url");
    const arrived = new Promise<void>((resolve) => this.#barriers.set(token, resolve));
    try {
      const client = await this.#redis.main(this.#timeoutMs);
      const barrier = `${JSON.stringify(["", token])}\n`;
      await within(client.sendCommand(["PUBLISH", this.#channel, barrier]), this.#timeoutMs);
      await within(arrived, this.#timeoutMs);
    } catch (error) {
      this.#report(error);
      throw redisUnavailable(error);
    } finally {
      this.#barriers.delete(token);
    }
  }

  async position(): Promise<Position> {
    const [epoch, now] = (await this.#call(NOW, undefined, [])) as [string, number];
    this.#epoch = epoch;
    // Just before now on Redis's clock: every stream's next entry comes after it.
    return `${epoch}.${BigInt(now) - 1n}-${MAX_SEQ}`;
  }

  async mark(group: string, type: "added" | "removed", userId: string): Promise<Position> {
    try {
      const [epoch, id] = (await this.#call(MARK, group, [this.#maxEntries, type, userId])) as [
        string,
        string,
      ];
      return `${epoch}.${id}`;
    } catch (error) {
      // A mark that may be missing makes reads incomplete until a reset went through.
      this.#owed = true;
      throw error;
    }
  }

  async reset(): Promise<void> {
    try {
      await this.#call(RESET, undefined, []);
      this.#owed = false;
    } catch {
      this.#owed = true;
    }
  }

  async read(group: string, position: Position): Promise<HistoryRead> {
    assertName("group", group);
    const from = parse(position);
    if (this.#owed) {
      await this.reset();
      if (this.#owed) throw new MembershipError("STORE_UNAVAILABLE", "Redis is unavailable");
    }
    const limit = Number(this.#maxEntries) + 1;
    const [epoch, reset, now, first, last, trimmed, cut, entries] = await this.#read(
      group,
      `${from.id[0]}-${from.id[1]}`,
      limit,
    );
    this.#epoch = epoch;
    if (from.epoch !== epoch)
      return { entries: [], complete: false, marked: false, position: await this.position() };
    const marked = compareIds(from.id, parseId(reset)) >= 0;
    // Complete: nothing after the position was trimmed (trimming takes the oldest first, so a
    // position at or after the first entry kept, or after the last ever made, lost nothing; a
    // quiet stream's expiry only a position older than the age limit can predate), no reset
    // since, and not cut short here.
    const kept =
      trimmed === 0 ||
      compareIds(from.id, parseId(last)) >= 0 ||
      (first !== "" && compareIds(from.id, parseId(first)) >= 0);
    const complete =
      marked &&
      kept &&
      cut === 0 &&
      Number(from.id[0]) > now - this.#maxAgeMs &&
      Number(from.id[0]) <= now;
    const read: Array<HistoryMessage | HistoryMark> = [];
    for (const [id, fields] of entries) {
      const entry = toEntry(group, `${epoch}.${id}`, fields);
      if (entry !== undefined) read.push(entry);
    }
    const end = entries.at(-1)?.[0];
    return {
      entries: read,
      complete,
      marked,
      position: end === undefined ? position : `${epoch}.${end}`,
    };
  }

  async recent(group: string, count: number): Promise<HistoryRead> {
    assertName("group", group);
    assertCount("count", count, 1_000);
    if (this.#owed) {
      await this.reset();
      if (this.#owed) throw new MembershipError("STORE_UNAVAILABLE", "Redis is unavailable");
    }
    // Marks are few between messages: twice the messages asked for, and some, holds them.
    const [epoch, reset, first, newest] = (await this.#call(RECENT, group, [
      String(count * 2 + 50),
    ])) as [string, string, string, Array<[string, Array<string | Buffer>]>];
    this.#epoch = epoch;
    const entries: Array<HistoryMessage | HistoryMark> = [];
    let messages = 0;
    let from: string | undefined;
    for (const [id, fields] of newest) {
      if (messages === count) break;
      const entry = toEntry(group, `${epoch}.${id}`, fields);
      if (entry === undefined) continue;
      entries.push(entry);
      from = id;
      if ("payload" in entry) messages++;
    }
    const marked = from === undefined || compareIds(parseId(from), parseId(reset)) > 0;
    return {
      entries: entries.reverse(),
      complete: marked && (from === first || first === ""),
      marked,
      position: newest[0] === undefined ? await this.position() : `${epoch}.${newest[0][0]}`,
    };
  }

  compare(a: Position, b: Position): number {
    const order = (p: Position) => {
      try {
        const { epoch, id } = parse(p);
        return { rank: epoch === this.#epoch ? 2 : 1, id };
      } catch {
        return { rank: 0, id: [0n, 0n] as const }; // not a position: before any
      }
    };
    const x = order(a);
    const y = order(b);
    return x.rank !== y.rank ? x.rank - y.rank : compareIds(x.id, y.id);
  }

  async close(): Promise<void> {
    this.#unfollow();
    this.#listeners.clear();
    await this.#redis.close();
  }

  #stream(group: string): string {
    return `${this.#prefix}:g:${group}`;
  }

  #read(group: string, after: string, limit: number): Promise<ReadReply> {
    return this.#call(READ, group, [after, String(limit)]) as Promise<ReadReply>;
  }

  /** Runs a script on KEYS (the group's stream, the epoch, the reset), ARGV (a new epoch, `args`). */
  async #call(
    script: string,
    group: string | undefined,
    args: Array<string | Buffer>,
  ): Promise<unknown> {
    const stream = group === undefined ? this.#resetKey : this.#stream(group);
    const keys = [stream, this.#epochKey, this.#resetKey];
    try {
      const command = ["EVAL", script, "3", ...keys, this.#newEpoch, ...args];
      const reply = await this.#redis.command(command, this.#timeoutMs);
      this.#failing = false;
      return reply;
    } catch (error) {
      this.#report(error);
      throw error;
    }
  }

  #receive(message: Buffer): void {
    const read = readMessage(message);
    if (read === undefined) return;
    const [epoch, id, group] = read.header;
    if (epoch === "" && typeof id === "string") {
      this.#barriers.get(id)?.();
      return;
    }
    const position = `${epoch}.${id}`;
    // Anyone who can reach Redis can publish here: only what this history would have sent.
    if (!isValidName(group) || !POSITION.test(position)) return;
    this.#listeners.emit({ group, position, payload: read.body });
  }

  #report(error: unknown): void {
    if (this.#failing) return;
    this.#failing = true;
    this.#onError(redisUnavailable(error));
  }
}

function toEntry(
  group: string,
  position: Position,
  fields: Array<string | Buffer>,
): HistoryMessage | HistoryMark | undefined {
  const [name, value, , user] = fields;
  if (String(name) === "m" && value !== undefined)
    return { group, position, payload: Buffer.from(value) };
  const type = String(value);
  if (String(name) === "t" && (type === "added" || type === "removed") && user !== undefined)
    return { type, userId: String(user) };
  return undefined;
}

function parse(position: Position): { epoch: string; id: StreamId } {
  const match = typeof position === "string" ? POSITION.exec(position) : null;
  const id = match && ([BigInt(match[2] as string), BigInt(match[3] as string)] as const);
  // The largest id is refused: nothing can come after it (XRANGE's exclusive start fails on it).
  if (match === null || id === null || id[0] >= MAX_SEQ || id[1] > MAX_SEQ)
    throw new MembershipError("INVALID_ARGUMENT", "not a position of a message history");
  return { epoch: match[1] as string, id };
}

function parseId(id: string): StreamId {
  const [ms = "0", seq = "0"] = id.split("-");
  return [BigInt(ms), BigInt(seq)];
}

function compareIds(a: StreamId, b: StreamId): number {
  return a[0] !== b[0] ? (a[0] < b[0] ? -1 : 1) : a[1] === b[1] ? 0 : a[1] < b[1] ? -1 : 1;
}
