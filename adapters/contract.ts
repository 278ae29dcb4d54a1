/**
 * The membership contract. Every store implements {@link MembershipStore}; the conformance suite
 * in `hub-membership/testing` checks every rule written here.
 *
 * Names: a user id or group name is any well-formed string (no lone surrogates) of 1 to 1,024
 * UTF-16 code units, the limit Azure SignalR Service gives group names. Names are case-sensitive
 * and round-trip exactly: `Sports` and `sports` are two groups, and `/ \ # ? % '`, spaces,
 * control characters, emoji and `__proto__` are ordinary characters. Anything else is rejected
 * with {@link MembershipError} code `INVALID_ARGUMENT` before any storage call.
 *
 * @module
 */

/** One user's membership of one group, as stored. */
export interface Membership {
  readonly userId: string;
  readonly group: string;
  /** When the membership was last granted (a repeated grant moves it). */
  readonly addedAt: Date;
  /** When the membership stops counting; absent means it never expires. */
  readonly expiresAt?: Date;
}

/** Options of {@link MembershipStore.addToGroup}. */
export interface AddToGroupOptions {
  /**
   * When the membership expires: a valid `Date` in the future. Absent means never. Expired
   * memberships are invisible to every read, exactly as if they had been removed.
   */
  expiresAt?: Date;
}

/** One grant of {@link MembershipStore.addMany}. */
export interface MembershipGrant {
  readonly userId: string;
  readonly group: string;
  /** As in {@link AddToGroupOptions}: absent means never. */
  readonly expiresAt?: Date;
}

/**
 * A change to one membership: `added` for every grant (a repeated one too), `removed` for a
 * revoke. A store may announce a revoke before it is stored, so that watchers drop access even
 * if the write then fails: that announcement has `pending: true`, and a `removed` without it
 * follows once the removal is stored (or an `added`, if a concurrent grant won).
 */
export type MembershipUpdate =
  | { type: "added"; userId: string; group: string; expiresAt?: Date }
  | { type: "removed"; userId: string; group: string; pending?: true; reason?: RemoveReason };

/**
 * Why a membership was removed, as watchers in every process tell the user: `left` when the user
 * left by themselves; `revoked` (the default, and what a `removed` change without one means)
 * otherwise.
 */
export type RemoveReason = "revoked" | "left";

/**
 * What {@link MembershipStore.watch} delivers: a {@link MembershipUpdate}, or `resync`: "changes
 * may have been missed; re-read whatever you hold". A watcher gets `resync` whenever its
 * {@link ChangeFeed} cannot prove that it delivered every change since it started: when the
 * subscription starts, after an outage that outlasted the feed's history, after a reconnect.
 */
export type MembershipChange = MembershipUpdate | { type: "resync" };

/**
 * How changes travel between the instances of a store (in any number of processes): every write
 * publishes its changes to the feed, and `watch` reads them from it. The Azure store's default is
 * a log in its own table; `hub-membership/redis` has one on Redis Streams.
 */
export interface ChangeFeed {
  /**
   * What kind of feed this is (`"table-log"`, `"redis"`). Every instance on one storage must use
   * the same kind: a store refuses, with `STORE_REJECTED`, storage set up for another.
   */
  readonly kind: string;

  /**
   * Publishes `updates` in order. Resolves once every subscriber, in any process, can read them.
   * Rejects with `MembershipError` `STORE_UNAVAILABLE` when that cannot be made sure of, and
   * the store operation that published then fails, so that a change is never stored and
   * announced to no one without the caller being told.
   */
  publish(updates: readonly MembershipUpdate[]): Promise<void>;

  /**
   * Delivers, from now on, every update published through other instances of the feed (this
   * instance's own are delivered by the store itself), at least once and in publish order per
   * user. Where it cannot prove it delivered every update since its cursor (when it starts, after
   * a reconnect, when history it had not read yet was trimmed), it delivers `{ type: "resync" }`.
   * `onError` is called once per outage; delivery resumes by itself.
   * @returns a function that stops delivery; calling it again does nothing.
   */
  subscribe(
    listener: (change: MembershipChange) => void,
    onError: (error: unknown) => void,
  ): () => void;

  /** Stops every subscription and releases what the feed opened. Idempotent. */
  close(): Promise<void>;
}

/** Stable codes of {@link MembershipError}. */
export type MembershipErrorCode =
  /** A user id, group name or option is not valid. Nothing was changed or read. */
  | "INVALID_ARGUMENT"
  /**
   * The storage did not answer, or answered with a fault or throttling (after the client's own
   * retries). Transient: the operation may have been partly applied; repeating it is safe.
   */
  | "STORE_UNAVAILABLE"
  /**
   * The storage refused the credentials: a wrong account key, a SAS that has expired or lacks a
   * permission the operation needs, a token without a role. A misconfiguration: retrying does
   * not help until it is fixed. The refused request changed nothing.
   */
  | "ACCESS_DENIED"
  /**
   * The storage refused a request for another reason it gave (an unexpected 400, a table that
   * does not exist and may not be created), or it is set up for another {@link ChangeFeed} than
   * the store's: a misconfiguration. Not transient; `cause` holds the storage's answer, if any.
   */
  | "STORE_REJECTED"
  /** The store was closed with {@link MembershipStore.close}. */
  | "CLOSED";

/** The one error type of this package. `code` is stable; `cause` holds the underlying error, if any. */
export class MembershipError extends Error {
  override readonly name = "MembershipError";
  readonly code: MembershipErrorCode;

  constructor(code: MembershipErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * Durable group membership, keyed both by user and by group.
 *
 * Every method validates its arguments first and rejects with {@link MembershipError}
 * `INVALID_ARGUMENT` without touching storage; a storage outage is `STORE_UNAVAILABLE`, refused
 * credentials `ACCESS_DENIED` and any other refusal `STORE_REJECTED`, each with the storage error
 * as `cause`, never an empty answer; after {@link close} every method rejects with `CLOSED`.
 * Methods never throw synchronously: errors arrive as a rejected promise (or, for
 * {@link membersOf}, from the iteration). `watch` alone throws, `CLOSED`, at the call.
 */
export interface MembershipStore {
  /**
   * Grants `userId` membership of `group`. Idempotent: granting again replaces `expiresAt`
   * (no `expiresAt` means the membership never expires) and moves `addedAt`.
   * A group exists while it has a member: the first grant creates it.
   * Emits an `added` change.
   */
  addToGroup(userId: string, group: string, options?: AddToGroupOptions): Promise<void>;

  /**
   * Grants many memberships, as `addToGroup` would one by one, but batched: a store with
   * transactions writes the rows of each partition together, with bounded parallelism. Every
   * grant is validated before anything is written (one bad grant: `INVALID_ARGUMENT`, nothing
   * changed). A user and group named twice is granted once, as the last of them says.
   * Idempotent but not atomic: after a failure some grants may have been made; repeating the
   * call completes it. Emits one `added` change per distinct grant, in the order given.
   * @returns how many distinct memberships were granted.
   */
  addMany(grants: Iterable<MembershipGrant>): Promise<number>;

  /**
   * Revokes `userId`'s membership of `group`. Idempotent.
   * @param options.reason carried by the `removed` change to every watcher, in every process:
   * `left` when the user left by themselves. Default `revoked`.
   * @returns `true` when a live membership was removed (and a `removed` change emitted),
   * `false` when there was none (never granted, already removed, or expired).
   * @throws MembershipError `INVALID_ARGUMENT` for a bad name or reason (nothing changed).
   */
  removeFromGroup(
    userId: string,
    group: string,
    options?: { reason?: RemoveReason },
  ): Promise<boolean>;

  /** @returns whether `userId` holds a live (unexpired) membership of `group`. */
  isMember(userId: string, group: string): Promise<boolean>;

  /**
   * The live memberships of `userId`, sorted by group name in ordinal (UTF-16 code unit) order,
   * as `Array.prototype.sort` orders strings. An unknown user has none: `[]`.
   */
  groupsOf(userId: string): Promise<Membership[]>;

  /**
   * Streams the live members of `group` in no particular order, paging internally, so any
   * number of members can be read without holding them all. An unknown group yields nothing.
   * The call itself never throws: every error, `INVALID_ARGUMENT` and `CLOSED` included,
   * surfaces from the iteration, before any member.
   */
  membersOf(group: string): AsyncIterable<Membership>;

  /** @returns the exact number of live members of `group` (0 for an unknown group). */
  countMembers(group: string): Promise<number>;

  /**
   * Streams every live membership in the store, each once, in no particular order, paging
   * internally: for exports and audits (it reads the whole store; never on a request path).
   * Errors surface from the iteration, as {@link membersOf}'s do.
   */
  memberships(): AsyncIterable<Membership>;

  /**
   * Removes every membership of `userId`, emitting one `removed` change per live membership.
   * @returns how many live memberships were removed.
   */
  removeUser(userId: string): Promise<number>;

  /**
   * Removes every membership of `group`, emitting one `removed` change per live membership.
   * @returns how many live memberships were removed.
   */
  deleteGroup(group: string): Promise<number>;

  /**
   * Subscribes to every change made through any store instance pointed at the same storage,
   * including instances in other processes where the implementation shares storage (the
   * in-memory store shares nothing: the same instance only). Delivery is at least once and in
   * order per user: a listener must tolerate seeing a change twice. Where a change from another
   * instance may have been missed, `{ type: "resync" }` is delivered instead, and the listener
   * must re-read what it holds. A change made through this instance is delivered synchronously,
   * after its write succeeded. A listener that throws does not stop delivery to the others; its
   * error is rethrown asynchronously.
   * @returns a function that unsubscribes; calling it again does nothing.
   */
  watch(listener: (change: MembershipChange) => void): () => void;

  /**
   * Stops watching, drops every listener and releases resources. Idempotent. Operations
   * started before `close` finish; later ones throw `CLOSED`.
   */
  close(): Promise<void>;
}
