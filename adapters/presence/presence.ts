/**
 * The presence contract: who is connected in a group now, as opposed to who may be (the store).
 * Every presence implements {@link Presence}; the suite `presenceConformance` in
 * `hub-membership/testing` checks every rule written here.
 *
 * A user is online in a group while at least one of its connections, on any server sharing the
 * presence, is in the group: joined by its hub binding, not revoked, not expired. Servers report
 * through a {@link PresenceSource} (a `MembershipSync` given `presence` does it for you); readers
 * see the sum of every live source.
 *
 * @module
 */

/** A user came online in a group (its first connection there) or went (its last one left). */
export interface PresenceEvent {
  readonly group: string;
  readonly userId: string;
  readonly online: boolean;
}

/** How many distinct users, and how many connections, are online. */
export interface PresenceCount {
  readonly users: number;
  readonly connections: number;
}

/** One page of a group's online users, in a stable order. */
export interface OnlinePage {
  readonly users: string[];
  /** Pass as `after` for the next page; absent on the last page. */
  readonly next?: string;
}

export interface OnlineQuery {
  /** Only users after this one (a page's `next`). */
  readonly after?: string;
  /** At most this many users, 1 to {@link MAX_ONLINE_PAGE}. Default 1,000. */
  readonly limit?: number;
}

/** The largest page {@link PresenceView.online} returns. */
export const MAX_ONLINE_PAGE = 10_000;

/**
 * What one reporter (one hub binding's `MembershipSync`) says of its connections. Every call
 * states the whole truth for one user, so a repeated or late-retried call is harmless.
 */
export interface PresenceSource {
  /**
   * The user has `connections` ready connections here, each in exactly `groups` (0: none; the
   * user is forgotten). Returns at once; the implementation delivers it, and on failure repairs
   * what it reported (never throws).
   */
  set(userId: string, connections: number, groups: readonly string[]): void;
  /** Withdraws everything this source reported. Idempotent. */
  close(): void;
}

/** What an app reads and listens to. Reads reflect every source's last `set` within moments. */
export interface PresenceView {
  /**
   * Online users and connections of `group`: O(1), never a question to every server.
   * @throws MembershipError `INVALID_ARGUMENT` for a bad group; `STORE_UNAVAILABLE` when the
   * backing cannot be read.
   */
  count(group: string): Promise<PresenceCount>;
  /** Online users and connections over all groups and none (a connected user with no group counts). */
  total(): Promise<PresenceCount>;
  /**
   * A page of `group`'s online users, sorted, each once. Page on with `next` for any size.
   * @throws MembershipError `INVALID_ARGUMENT` for a bad group, `after` or `limit`;
   * `STORE_UNAVAILABLE` when the backing cannot be read.
   */
  online(group: string, query?: OnlineQuery): Promise<OnlinePage>;
  /** Whether `userId` has a connection anywhere (in `group`, if given). Same errors as `count`. */
  isOnline(userId: string, group?: string): Promise<boolean>;
  /**
   * Calls `listener` once per user per group as it comes online or goes offline, on every
   * server sharing the presence (each server gets each event once; forward it to your own
   * connections only). Best effort: an event sent while this server was cut off from the backing
   * is not delivered again; reads stay exact. Returns the unsubscribe.
   */
  subscribe(listener: (event: PresenceEvent) => void): () => void;
}

/** A presence backing: in this process (`MemoryPresence`) or shared by servers (`RedisPresence`). */
export interface Presence extends PresenceView {
  /** A new reporter; each hub binding takes its own. */
  source(): PresenceSource;
  /** Resolves once other servers' events arrive here; rejects if the backing is unreachable. */
  start(): Promise<unknown>;
  /** Withdraws this process's sources and stops delivery. Idempotent. */
  close(): Promise<void>;
}
