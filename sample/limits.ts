import {
  BurstyRateLimiter,
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from "rate-limiter-flexible";
import type { RedisClientType } from "redis";
import type { SampleConfig } from "./config.js";
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
  /** Open connections per user on one server. */
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

  constructor(limits: Limits, redis?: RedisClientType) {
    this.limits = limits;
    this.#redis = redis;
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
    if (this.#redis?.isOpen) this.#redis.destroy();
  }
}

/** The sample's guard: per-user budgets in Redis (a fail-fast connection of its own) with REDIS_URL. */
export async function floodGuardOf(config: SampleConfig): Promise<FloodGuard> {
  const redis = config.redisUrl
    ? await connectRedis(config.redisUrl, { failFast: true })
    : undefined;
  return new FloodGuard(config.limits, redis);
}
