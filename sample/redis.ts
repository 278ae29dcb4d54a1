import { createClient, type RedisClientType } from "redis";
import { RedisChangeFeed } from "../adapters/redis/index.js";
import type { SampleConfig } from "./config.js";
import type { Log } from "./observability.js";
import { redact, redactedMessage } from "./redact.js";

/**
 * A Redis client for the sample: the start-up fails at once, with one clear line, if Redis is not
 * there; once it was, the client rides out Redis restarts.
 */
export async function connectRedis(
  url: string,
  options: { failFast?: boolean; log?: Log; name?: string } = {},
): Promise<RedisClientType> {
  let up = false;
  // An outage is logged once as it starts and once as it ends (with how many errors it had),
  // not on every reconnection attempt.
  let errors = 0;
  let downSince = 0;
  const client = options.name ?? "redis";
  const redis: RedisClientType = createClient({
    url,
    // failFast: commands fail at once while Redis is away instead of waiting for it.
    ...(options.failFast && { disableOfflineQueue: true }),
    socket: {
      reconnectStrategy: (retries, cause) => (up ? Math.min(100 * retries, 2_000) : cause),
    },
  });
  redis.on("error", (e: Error) => {
    if (!up || errors++ > 0) return;
    downSince = Date.now();
    options.log?.error(
      { event: "redis.down", client, error: redactedMessage(e) },
      "Redis is unavailable",
    );
  });
  redis.on("ready", () => {
    if (errors === 0) return;
    options.log?.info(
      { event: "redis.up", client, errors, downMs: Date.now() - downSince },
      "Redis is back",
    );
    errors = 0;
  });
  await redis.connect().catch((error: unknown) => {
    if (redis.isOpen) redis.destroy();
    throw new Error(`cannot reach Redis at ${redact(url)}: ${redactedMessage(error)}`);
  });
  up = true;
  return redis;
}

/**
 * Where membership changes travel, from the environment alike for every server and the admin
 * script: REDIS_URL set means Redis Streams, unset the table's own log. The table names its feed,
 * so a process on the other one refuses to write instead of missing the others' changes.
 */
export const changeFeedOf = (config: SampleConfig) =>
  config.redisUrl === undefined ? undefined : new RedisChangeFeed({ url: config.redisUrl });
