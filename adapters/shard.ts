/**
 * A stable shard for a user, the same in every process (FNV-1a over UTF-16 code units): change
 * feeds put a user's changes in one shard, so their order holds.
 */
export function shardOf(userId: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < userId.length; i++) {
    hash ^= userId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % shards;
}
