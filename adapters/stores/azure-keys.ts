import { createHash } from "node:crypto";

/**
 * Longest escaped key kept as is. Azure allows 1 KiB per key and Azurite 512 UTF-16 units; the
 * partition prefixes below take 2, so 500 leaves room.
 */
const MAX_ESCAPED = 500;
const SAFE = /^[A-Za-z0-9_.-]$/;

/**
 * Maps a user id or group name to a PartitionKey/RowKey part.
 *
 * `[A-Za-z0-9_.-]` stands for itself and any other UTF-16 code unit becomes `!` and four hex
 * digits: a prefix-free code, so distinct names give distinct keys, and no forbidden key
 * character (`/ \ # ?`, controls) nor anything the SDK or Azurite quote badly (`' %`) reaches a
 * key. A 1,024-unit name can escape to 5,120 units, which no key holds, and no encoding packs
 * 1,024 arbitrary code units into 512; so an escaped form longer than {@link MAX_ESCAPED} becomes
 * `~` + SHA-256 (base64url). `~` is never in an escaped form, so the two kinds never meet, and
 * two long names share a key only by a SHA-256 collision. The exact name is stored in every row
 * and readers compare it, so even that could not merge two names on read.
 */
export function toKey(name: string): string {
  let escaped = "";
  for (let i = 0; i < name.length; i++) {
    const ch = name[i] as string;
    escaped += SAFE.test(ch) ? ch : `!${name.charCodeAt(i).toString(16).padStart(4, "0")}`;
    if (escaped.length > MAX_ESCAPED) {
      return `~${createHash("sha256").update(name, "utf16le").digest("base64url")}`;
    }
  }
  return escaped;
}

/** PartitionKey of a user's rows (the authoritative side). */
export const userPartition = (userId: string) => `u:${toKey(userId)}`;
/** PartitionKey of a group's rows (the index). */
export const groupPartition = (group: string) => `g:${toKey(group)}`;
