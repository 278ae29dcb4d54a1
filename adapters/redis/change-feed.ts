import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { ChangeFeed, MembershipChange, MembershipUpdate } from "../contract.js";
import { stampWritten } from "../diagnostics.js";
import { FeedSubscribers } from "../listeners.js";
import { shardOf } from "../shard.js";
import { removedChange } from "../validate.js";
import { RedisConnections, type RedisTarget, redisUnavailable, within } from "./client.js";

/** Options of {@link RedisChangeFeed}: a `url` or a `client`, and these. */
export interface RedisChangeFeedSettings {
  /** Prefix of the keys: `<prefix>:{0}` to `<prefix>:{3}` (streams) and `…:seq`. Default `hub-membership:changes`. */
  prefix?: string;
  /** Entries kept per stream, approximately (`XADD … MAXLEN ~`). Default 100,000. */
  maxLength?: number;
  /** How long a publish may take before the store operation fails. Default 2 s. */
  publishTimeoutMs?: number;
  /** How long one blocking read waits before it is renewed. Default 5 s. */
  blockMs?: number;
}

export type RedisChangeFeedOptions = RedisTarget & RedisChangeFeedSettings;

/**
 * One Lua call per stream and publish: the counter and the entries move together, so each stream
 * is a gapless sequence (entry ids `<seq>-1`), and a reader can tell a missed entry from none.
 */
const PUBLISH = `
local n = #ARGV - 2
local last = redis.call('INCRBY', KEYS[2], n)
for i = 1, n do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], (last - n + i) .. '-1', 'w', ARGV[2], 'c', ARGV[i + 2])
end
return last`;

const SHARDS = 4;

type Entry = [id: string, fields: string[]];
type StreamReply = Array<[key: string, entries: Entry[]]> | null;

/**
 * A {@link ChangeFeed} on Redis Streams, for `AzureTableMembershipStore`'s `changeFeed`:
 *
 * ```ts
 * AzureTableMembershipStore.fromConnectionString(cs, { changeFeed: new RedisChangeFeed({ url }) });
 * ```
 *
 * Changes go to four streams, by user (so a user's changes stay in order), trimmed to about
 * `maxLength` entries each. A subscriber reads all four with one blocking `XREAD` from its
 * cursors on a connection of its own, and says `resync` when it starts, after any lost
 * connection, and when entries it had not read were trimmed or lost (a gap in the sequence, or
 * a counter behind its cursor after Redis lost its data).
 */
export class RedisChangeFeed implements ChangeFeed {
  readonly kind = "redis";
  readonly writer = randomBytes(6).toString("base64url");
  readonly #redis: RedisConnections;
  readonly #streams: string[];
  readonly #counters: string[];
  readonly #maxLength: string;
  readonly #publishTimeoutMs: number;
  readonly #blockMs: number;
  readonly #subscribers = new FeedSubscribers(
    () => void this.#read(++this.#generation),
    () => this.#generation++,
  );
  #generation = 0;

  constructor(options: RedisChangeFeedOptions) {
    this.#redis = new RedisConnections(options, (error) => this.#report(error));
    const prefix = options.prefix ?? "hub-membership:changes";
    this.#streams = Array.from({ length: SHARDS }, (_, i) => `${prefix}:{${i}}`);
    this.#counters = this.#streams.map((stream) => `${stream}:seq`);
    this.#maxLength = String(options.maxLength ?? 100_000);
    this.#publishTimeoutMs = options.publishTimeoutMs ?? 2_000;
    this.#blockMs = options.blockMs ?? 5_000;
  }

  async publish(updates: readonly MembershipUpdate[]): Promise<void> {
    if (updates.length === 0) return;
    const byShard = new Map<number, string[]>();
    for (const update of updates) {
      const shard = shardOf(update.userId, SHARDS);
      // `at`: when it was written, for the propagation lag of whoever applies it.
      const payload = JSON.stringify({ ...update, at: Date.now() });
      const list = byShard.get(shard);
      if (list) list.push(payload);
      else byShard.set(shard, [payload]);
    }
    try {
      const client = await this.#redis.main(this.#publishTimeoutMs);
      await within(
        Promise.all(
          [...byShard].map(([shard, payloads]) =>
            client.sendCommand([
              "EVAL",
              PUBLISH,
              "2",
              this.#streams[shard] as string,
              this.#counters[shard] as string,
              this.#maxLength,
              this.writer,
              ...payloads,
            ]),
          ),
        ),
        this.#publishTimeoutMs,
      );
    } catch (error) {
      throw redisUnavailable(error);
    }
  }

  subscribe(
    listener: (change: MembershipChange) => void,
    onError: (error: unknown) => void,
  ): () => void {
    return this.#subscribers.subscribe(listener, onError);
  }

  async close(): Promise<void> {
    this.#subscribers.clear();
    await this.#redis.close();
  }

  async #read(generation: number): Promise<void> {
    const running = () => generation === this.#generation;
    let cursors: number[] | undefined;
    let connection: Awaited<ReturnType<RedisConnections["own"]>> | undefined;
    let backoff = 100;
    while (running()) {
      try {
        connection ??= await this.#redis.own();
        if (!running()) break;
        if (cursors === undefined) {
          // From now on; the start (and any reconnect) is covered by a resync.
          cursors = await this.#heads(connection, undefined);
          if (!running()) break;
          this.#subscribers.emit({ type: "resync" });
        }
        const reply = (await connection.sendCommand([
          "XREAD",
          "COUNT",
          "1000",
          "BLOCK",
          String(this.#blockMs),
          "STREAMS",
          ...this.#streams,
          ...cursors.map((cursor) => `${cursor}-1`),
        ])) as StreamReply;
        if (!running()) break;
        this.#subscribers.recovered();
        backoff = 100;
        this.#deliver(reply, cursors);
      } catch (error) {
        if (!running()) break;
        this.#report(error);
        // The connection is lost, or was never had: a fresh one, and a resync once it is back.
        if (connection) this.#redis.drop(connection);
        connection = undefined;
        if (cursors !== undefined) cursors = await this.#afterOutage(cursors, running);
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 2_000);
      }
    }
    if (connection) this.#redis.drop(connection);
  }

  /** Reconnects, then resumes from `cursors`, behind the counters only where Redis lost data. */
  async #afterOutage(cursors: number[], running: () => boolean): Promise<number[] | undefined> {
    while (running()) {
      try {
        const connection = await this.#redis.main(this.#publishTimeoutMs);
        const next = await this.#heads(connection, cursors);
        if (running()) this.#subscribers.emit({ type: "resync" });
        return next;
      } catch (error) {
        this.#report(error);
        await sleep(1_000);
      }
    }
    return undefined;
  }

  /** The counters; with `cursors`, each cursor kept unless its counter is behind it (data lost). */
  async #heads(
    connection: { sendCommand(args: ReadonlyArray<string>): Promise<unknown> },
    cursors: number[] | undefined,
  ): Promise<number[]> {
    const values = (await connection.sendCommand(["MGET", ...this.#counters])) as Array<
      string | null
    >;
    return values.map((value, i) => {
      const head = Number(value ?? 0);
      const cursor = cursors?.[i];
      return cursor === undefined || head < cursor ? head : cursor;
    });
  }

  #deliver(reply: StreamReply, cursors: number[]): void {
    let gap = false;
    const updates: MembershipUpdate[] = [];
    for (const [key, entries] of reply ?? []) {
      const shard = this.#streams.indexOf(key);
      let cursor = cursors[shard] ?? 0;
      for (const [id, fields] of entries) {
        const seq = Number.parseInt(id, 10);
        if (seq !== cursor + 1) gap = true; // trimmed before it was read
        cursor = seq;
        const writer = fields[fields.indexOf("w") + 1];
        const payload = fields[fields.indexOf("c") + 1];
        if (writer === this.writer || payload === undefined) continue;
        const update = parseUpdate(payload);
        if (update) updates.push(update);
      }
      cursors[shard] = cursor;
    }
    if (gap) this.#subscribers.emit({ type: "resync" });
    for (const update of updates) this.#subscribers.emit(update);
  }

  #report(error: unknown): void {
    this.#subscribers.failed(redisUnavailable(error));
  }
}

function parseUpdate(payload: string): MembershipUpdate | undefined {
  const value = JSON.parse(payload) as {
    type?: unknown;
    userId?: unknown;
    group?: unknown;
    expiresAt?: unknown;
    pending?: unknown;
    at?: unknown;
  };
  const update = toUpdate(value);
  if (update !== undefined && typeof value.at === "number") stampWritten(update, value.at);
  return update;
}

function toUpdate(value: {
  type?: unknown;
  userId?: unknown;
  group?: unknown;
  expiresAt?: unknown;
  pending?: unknown;
  reason?: unknown;
}): MembershipUpdate | undefined {
  const { type, userId, group, expiresAt } = value;
  if (typeof userId !== "string" || typeof group !== "string") return undefined;
  if (type === "removed")
    return removedChange(
      userId,
      group,
      value.reason === "left" ? "left" : undefined,
      value.pending === true || undefined,
    );
  if (type !== "added") return undefined;
  return typeof expiresAt === "string"
    ? { type, userId, group, expiresAt: new Date(expiresAt) }
    : { type, userId, group };
}
