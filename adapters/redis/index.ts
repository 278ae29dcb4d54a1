export type { BroadcastTarget, ServerBus } from "../hubs/ws.js";
export { RedisBroadcast, type RedisBroadcastOptions } from "./broadcast.js";
export { RedisChangeFeed, type RedisChangeFeedOptions } from "./change-feed.js";
export type { RedisClientLike, RedisTarget } from "./client.js";
export { RedisHistory, type RedisHistoryOptions } from "./history.js";
export { RedisPresence, type RedisPresenceOptions } from "./presence.js";
