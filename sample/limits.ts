import { randomUUID } from "node:crypto";
import {
  BurstyRateLimiter,
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from "rate-limiter-flexible";
import type { RedisClientType } from "redis";
import type { SampleConfig } from "./config.js";
import type { Log } from "./observability.js";
import { connectRedis } from "./redis.js";

/** What a client may send, per connection and per user (all in config.ts, see sample/README.md). */
export interface Limits {
  /** Messages per second per connection, and how many more it may send in a burst. */
  messagesPerSecond: number;
  messageBurst: number;
  /** Bytes per second per connection. */
  bytesPerSecond: number;
  /** Messages per second per user, over all their connections (and servers, with Redis). */
  userMessagesPerSecond: number;
  /** Open connections per user, over every endpoint (and server, with Redis). */
  connectionsPerUser: number;
  /** Messages refused within 10 s after which the connection is closed (1008). */
  closeAfterRefusals: number;
  /** How long a user whose connection was closed for flooding may not connect again. */
  penaltySeconds: number;
}

export type Verdict = { ok: true } | { ok: false; retryAfterMs: number; close: boolean };

/**
 * Token buckets for what clients send (rate-limiter-flexible): per connection in memory, per user
 * in Redis when the sample has one (so a user's budget holds across servers), with an in-memory
 * stand-in while Redis is away. A refused message is not delivered; a connection that keeps
 * going past `closeAfterRefusals` is told to go.
 */
export class FloodGuard {
  readonly limits: Limits;
  readonly #messages: BurstyRateLimiter;
  readonly #bytes: RateLimiterMemory;
  readonly #user: RateLimiterMemory | RateLimiterRedis;
  readonly #refusals: RateLimiterMemory;
  readonly #penalties: RateLimiterMemory | RateLimiterRedis;

  readonly #redis: RedisClientType | undefined;
  /** Each user's open connections, capped at `connectionsPerUser` (on every server, with Redis). */
  readonly slots: MemorySlots | RedisSlots;

  constructor(limits: Limits, redis?: RedisClientType) {
    this.limits = limits;
    this.#redis = redis;
    this.slots = redis
      ? new RedisSlots(redis, limits.connectionsPerUser)
      : new MemorySlots(limits.connectionsPerUser);
    this.#messages = new BurstyRateLimiter(
      new RateLimiterMemory({ points: limits.messagesPerSecond, duration: 1 }),
      new RateLimiterMemory({ points: limits.messageBurst, duration: 10, keyPrefix: "burst" }),
    );
    this.#bytes = new RateLimiterMemory({ points: limits.bytesPerSecond, duration: 1 });
    const shared = (options: { points: number; duration: number; keyPrefix: string }) =>
      redis
        ? new RateLimiterRedis({
            ...options,
            storeClient: redis,
            useRedisPackage: true,
            // While Redis is away, at once to the in-memory stand-in: a message must not wait.
            rejectIfRedisNotReady: true,
            // A key past its budget is refused from memory for the rest of its window: a flood
            // costs no Redis calls, and others' checks do not queue behind it.
            inMemoryBlockOnConsumed: options.points + 1,
            keyPrefix: `hub-membership:rate:${options.keyPrefix}`,
            insuranceLimiter: new RateLimiterMemory(options),
          })
        : new RateLimiterMemory(options);
    this.#user = shared({ points: limits.userMessagesPerSecond, duration: 1, keyPrefix: "user" });
    this.#penalties = shared({ points: 1, duration: limits.penaltySeconds, keyPrefix: "penalty" });
    this.#refusals = new RateLimiterMemory({ points: limits.closeAfterRefusals, duration: 10 });
  }

  /** Whether a message of `bytes` from this connection may be handled. */
  async admit(connectionId: string, userId: string, bytes: number): Promise<Verdict> {
    try {
      await this.#messages.consume(connectionId);
      await this.#bytes.consume(connectionId, bytes);
      await this.#user.consume(userId);
      return { ok: true };
    } catch (refusal) {
      if (!(refusal instanceof RateLimiterRes)) throw refusal;
      const close = await this.#refusals.consume(connectionId).then(
        () => false,
        () => true,
      );
      // Closed for flooding, the user stays out a while: reconnecting at once would buy a fresh
      // connection budget, and each connection costs a token check and a rehydrating read.
      if (close) await this.#penalties.block(userId, this.limits.penaltySeconds);
      return { ok: false, retryAfterMs: Math.max(1, Math.ceil(refusal.msBeforeNext)), close };
    }
  }

  /**
   * Whether the user may open a connection now: not within `penaltySeconds` of one of theirs
   * being closed for flooding (on any server, with Redis).
   */
  async admitConnection(userId: string): Promise<Verdict> {
    const penalty = await this.#penalties.get(userId);
    if (penalty === null || penalty.consumedPoints <= 1) return { ok: true };
    return { ok: false, retryAfterMs: Math.max(1, penalty.msBeforeNext), close: true };
  }

  /** Closes the guard's Redis connection, if it has one. */
  close(): void {
    this.slots.close();
    if (this.#redis?.isOpen) this.#redis.destroy();
  }
}

/** The sample's guard: per-user budgets in Redis (a fail-fast connection of its own) with REDIS_URL. */
export async function floodGuardOf(config: SampleConfig, log: Log): Promise<FloodGuard> {
  const redis = config.redisUrl
    ? await connectRedis(config.redisUrl, { failFast: true, log, name: "limits" })
    : undefined;
  return new FloodGuard(config.limits, redis);
}

/** A user's open connections, counted where they are admitted. */
export interface ConnectionSlots {
  /**
   * Takes one of the user's `connectionsPerUser` slots, atomically (nothing can come between
   * the count and the taking): resolves to the function that gives it back, or to `undefined`
   * when every slot is taken.
   */
  take(userId: string): Promise<(() => void) | undefined>;
  close(): void;
}

/** Slots on this server only: the check and the count happen in one synchronous step. */
export class MemorySlots implements ConnectionSlots {
  readonly #taken = new Map<string, number>();

  constructor(readonly cap: number) {}

  async take(userId: string): Promise<(() => void) | undefined> {
    return this.takeNow(userId);
  }

  takeNow(userId: string): (() => void) | undefined {
    const taken = this.#taken.get(userId) ?? 0;
    if (taken >= this.cap) return undefined;
    this.#taken.set(userId, taken + 1);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      const left = (this.#taken.get(userId) ?? 1) - 1;
      if (left === 0) this.#taken.delete(userId);
      else this.#taken.set(userId, left);
    };
  }

  close(): void {}
}

/** Counts, drops expired slots and takes one if there is room: one atomic step in Redis. */
const TAKE = `
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`;
/** Extends a server's slots of one user (and puts them back after a Redis restart). */
const RENEW = `
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1`;

/**
 * Slots on every server sharing a Redis: a sorted set per user of slot ids, each expiring
 * `ttlMs` after its server last renewed it (Redis's clock, not the servers'), so a server that
 * dies gives its slots back within `ttlMs`. While Redis is away, slots are counted on this server
 * alone ({@link MemorySlots}): the cap holds per server, and Redis has the slots again at the
 * next renewal.
 */
export class RedisSlots implements ConnectionSlots {
  readonly #redis: RedisClientType;
  readonly #fallback: MemorySlots;
  /** Slot ids this server holds, by user. */
  readonly #held = new Map<string, Set<string>>();
  readonly #renewal: NodeJS.Timeout;
  #next = 0;

  constructor(
    redis: RedisClientType,
    readonly cap: number,
    readonly ttlMs = 15_000,
  ) {
    this.#redis = redis;
    this.#fallback = new MemorySlots(cap);
    this.#renewal = setInterval(() => void this.#renew(), ttlMs / 3);
    this.#renewal.unref();
  }

  async take(userId: string): Promise<(() => void) | undefined> {
    const slot = `${SERVER_ID}:${this.#next++}`;
    const key = slotKey(userId);
    let taken: unknown;
    try {
      taken = await this.#redis.eval(TAKE, {
        keys: [key],
        arguments: [String(this.cap), String(this.ttlMs), slot],
      });
    } catch {
      return this.#fallback.takeNow(userId);
    }
    if (taken !== 1) return undefined;
    const slots = this.#held.get(userId) ?? new Set<string>();
    this.#held.set(userId, slots);
    slots.add(slot);
    return () => {
      if (!slots.delete(slot)) return;
      if (slots.size === 0 && this.#held.get(userId) === slots) this.#held.delete(userId);
      this.#redis.zRem(key, slot).catch(() => {}); // else it expires within ttlMs
    };
  }

  async #renew(): Promise<void> {
    for (const [userId, slots] of this.#held) {
      await this.#redis
        .eval(RENEW, { keys: [slotKey(userId)], arguments: [String(this.ttlMs), ...slots] })
        .catch(() => {}); // Redis away: the fallback counts meanwhile; the next renewal puts them back
    }
  }

  close(): void {
    clearInterval(this.#renewal);
  }
}

const SERVER_ID = randomUUID();
const slotKey = (userId: string) => `hub-membership:slots:${userId}`;

/** The most groups a welcome lists: a user in 20,000 groups does not get a 200 KiB frame. */
export const WELCOME_GROUPS = 1_000;

/**
 * A welcome's groups: the first {@link WELCOME_GROUPS} (sorted) and how many there are in all.
 * The connection is in every one of them all the same.
 */
export const welcomeGroups = (groups: string[]) => ({
  groups: groups.length > WELCOME_GROUPS ? groups.slice(0, WELCOME_GROUPS) : groups,
  groupCount: groups.length,
});
