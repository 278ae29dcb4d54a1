import { createClient, type RedisClientType } from "redis";
import { RedisChangeFeed } from "../adapters/redis/index.js";
import type { SampleConfig } from "./config.js";
import { redact, redactedMessage } from "./redact.js";

/**
 * A Redis client for the sample: the start-up fails at once, with one clear line, if Redis is not
 * there; once it was, the client rides out Redis restarts.
 */
export async function connectRedis(
  url: string,
  options: { failFast?: boolean } = {},
): Promise<RedisClientType> {
  let up = false;
  const client: RedisClientType = createClient({
    url,
    // failFast: commands fail at once while Redis is away instead of waiting for it.
    ...(options.failFast && { disableOfflineQueue: true }),
    socket: {
      reconnectStrategy: (retries, cause) => (up ? Math.min(100 * retries, 2_000) : cause),
    },
  });
  client.on("error", (e: Error) => up && console.error(`redis: ${redactedMessage(e)}`));
  await client.connect().catch((error: unknown) => {
    if (client.isOpen) client.destroy();
    throw new Error(`cannot reach Redis at ${redact(url)}: ${redactedMessage(error)}`);
  });
  up = true;
  return client;
}

/**
 * Where membership changes travel, from the environment alike for every server and the admin
 * script: REDIS_URL set means Redis Streams, unset the table's own log. The table names its feed,
 * so a process on the other one refuses to write instead of missing the others' changes.
 */
export const changeFeedOf = (config: SampleConfig) =>
  config.redisUrl === undefined ? undefined : new RedisChangeFeed({ url: config.redisUrl });
