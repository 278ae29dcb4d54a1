/**
 * What the library reports, on `node:diagnostics_channel` (as undici and fastify do): nothing is
 * built or sent while no one subscribes. Channel names and payloads are public API:
 *
 * ```ts
 * import { subscribe } from "node:diagnostics_channel";
 * subscribe("hub-membership:storage", (event) => histogram.observe(event.durationMs));
 * ```
 */
import { channel } from "node:diagnostics_channel";
import type { MembershipChange } from "./contract.js";
import type { JoinReason, LeaveReason } from "./sync/membership-sync.js";

/** `hub-membership:storage`: one per storage request of the Azure store, once it is answered. */
export interface StorageRequestEvent {
  /** `query`, `read`, `batch`, `upsert`, `update`, `delete`, `createTable` or `other`. */
  operation: string;
  /** From the first try to the last answer, retries included. */
  durationMs: number;
  /** `ok`, `not_found` (a 404, often expected), or `error`. */
  outcome: "ok" | "not_found" | "error";
  /** The last HTTP status, if an answer came. */
  status?: number;
  /** Tries beyond the first the SDK's retry policy made. */
  retries: number;
  /** Whether any try was throttled (429, 503 ServerBusy, 500 OperationTimedOut). */
  throttled: boolean;
}

/**
 * `hub-membership:change`: a grant or revoke applied to this process's connections of a user
 * (by `MembershipSync`), once per change: a revoke when its connections have left, a grant once
 * the read that follows it has joined them.
 */
export interface ChangeAppliedEvent {
  type: "added" | "removed";
  userId: string;
  group: string;
  /** Why, for removals: `revoked`, `expired` or `left`. */
  reason?: LeaveReason | JoinReason;
  /** The user's connections here. */
  connections: number;
  /**
   * From the store write to this moment, for changes that came from another process through the
   * change feed (absent for this process's own). Measured against the writer's clock (Redis) or
   * the storage's (the table log): clock skew between machines adds to it.
   */
  lagMs?: number;
}

/** `hub-membership:resync`: every connected user is read again (the feed may have missed changes). */
export interface ResyncEvent {
  users: number;
}

/** `hub-membership:rehydrate`: a connection was put in its stored groups. */
export interface RehydrateEvent {
  connectionId: string;
  userId: string;
  groups: number;
  durationMs: number;
  /** Whether the store was read (false: copied from another connection of the user here). */
  read: boolean;
}

/** `hub-membership:slow-consumer`: a connection was terminated for not reading. */
export interface SlowConsumerEvent {
  connectionId: string;
  bufferedBytes: number;
}

/** `hub-membership:feed`: the change feed went down (once per outage) or came back. */
export interface FeedEvent {
  state: "down" | "up";
  error?: unknown;
}

/** The channels, by what they carry. */
export const diagnostics = {
  storage: channel("hub-membership:storage"),
  change: channel("hub-membership:change"),
  resync: channel("hub-membership:resync"),
  rehydrate: channel("hub-membership:rehydrate"),
  slowConsumer: channel("hub-membership:slow-consumer"),
  feed: channel("hub-membership:feed"),
} as const;

/** When changes that came through a feed were written: kept beside them, not in them. */
const written = new WeakMap<MembershipChange, number>();

/** Records when `change` was written (ms since the epoch), for `ChangeAppliedEvent.lagMs`. */
export function stampWritten(change: MembershipChange, at: number): void {
  if (Number.isFinite(at)) written.set(change, at);
}

/** When `change` was written, if its feed said. */
export function writtenAt(change: MembershipChange): number | undefined {
  return written.get(change);
}
