export { type BroadcastTarget, RedisBroadcast, type RedisBroadcastOptions } from "./broadcast.js";
export { RedisChangeFeed, type RedisChangeFeedOptions } from "./change-feed.js";
export type { RedisClientLike, RedisTarget } from "./client.js";
