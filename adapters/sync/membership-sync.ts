import pLimit from "p-limit";
import type {
  AddToGroupOptions,
  Membership,
  MembershipChange,
  MembershipStore,
  MembershipUpdate,
} from "../contract.js";
import { MembershipError } from "../contract.js";
import { diagnostics, writtenAt } from "../diagnostics.js";
import type { MessageHistory } from "../history/history.js";
import type {
  Presence,
  PresenceEvent,
  PresenceSource,
  PresenceView,
} from "../presence/presence.js";
import { assertName, removedChange } from "../validate.js";

/** Why a connection joins a group: rehydrated on connect, or granted while connected. */
export type JoinReason = "connect" | "granted";
/** Why a connection leaves a group. */
export type LeaveReason = "revoked" | "expired" | "left";

/**
 * What {@link MembershipSync} drives: the group operations of a hub server. Both may be called
 * for a connection that is already gone and must not throw then. `reason` tells the hub why, so
 * it can tell the client.
 */
export interface HubBinding {
  join(connectionId: string, group: string, reason?: JoinReason): void | Promise<void>;
  leave(connectionId: string, group: string, reason?: LeaveReason): void | Promise<void>;
}

export interface MembershipSyncOptions {
  store: MembershipStore;
  hub: HubBinding;
  /**
   * Called when the hub binding fails to join or leave, or a background re-read of a user's
   * groups fails (it is retried). Default: a process warning. Never thrown into callers.
   */
  onError?: (error: unknown) => void;
  /** Delay before a failed background re-read is retried. Default 2 s. */
  retryDelayMs?: number;
  /** Reads of the store at once when a `resync` re-reads every connected user. Default 16. */
  resyncConcurrency?: number;
  /**
   * How long a revoke announced as `pending` keeps its group out of reads if no confirmation
   * comes (the revoke failed); a read then settles it. Default 5 s.
   */
  pendingRevokeMs?: number;
  /**
   * The message history whose marks keep replays within membership (see `MessageHistory.mark`):
   * a revoke through this instance is marked before it is stored.
   */
  history?: Pick<MessageHistory, "mark">;
  /** Every change the store announces, of any user, before it is applied here. */
  onChange?: (change: MembershipChange) => void;
  /**
   * Where this instance reports who is connected in which group (see {@link Presence}): share one
   * between the bindings of a process, or use `RedisPresence` for every server.
   */
  presence?: Presence;
  /**
   * With `presence`: every user coming online in a group or going, from every server sharing it,
   * until `close` (tell this server's connections in the group).
   */
  onPresence?: (event: PresenceEvent) => void;
}

/** Per connection: its user, and whether it is in the user's groups yet (the hub was told). */
interface Connection {
  readonly userId: string;
  ready: boolean;
}

interface User {
  readonly userId: string;
  readonly connections: Set<string>;
  /**
   * The user's groups with their expiry (undefined = never): the last read, kept current by
   * every hint and expiry since. One copy for all the user's connections: every ready one is in
   * exactly these. Undefined until a read applied.
   */
  groups: Map<string, number | undefined> | undefined;
  /** `groups`' names, sorted, until they change. */
  sorted: string[] | undefined;
  /** The running read loop, if any. */
  loop: Promise<void> | undefined;
  /** A change arrived since the current read started: read again. */
  dirty: boolean;
  /** Groups a hint removed since the current read started: that read must not bring them back. */
  removedDuringRead: Set<string> | undefined;
  /**
   * Groups whose revoke was announced (`pending`) but not yet confirmed, until when: a read may
   * still see the row, so none adds them back until the confirmation or a grant's hint arrives,
   * or the time runs out (the revoke failed) and a read settles it.
   */
  pending: Map<string, number> | undefined;
  /** The read that settles pending revokes whose confirmation never came. */
  pendingTimer: NodeJS.Timeout | undefined;
  /** Expiry timers by group. Both are created on first use: most users have neither. */
  timers: Map<string, NodeJS.Timeout> | undefined;
}

const MAX_TIMER = 2 ** 31 - 1;

/**
 * Joins a {@link MembershipStore} to any hub server.
 *
 * `connect` rehydrates a connection's groups from the store; `grant` and `revoke` persist first
 * and then join or leave every live connection of the user; changes from other processes arrive
 * through `store.watch` and are applied the same way; a membership's `expiresAt` makes its
 * connections leave on time.
 *
 * Changes are hints, not facts: they arrive in delivery order, which is not the order they were
 * stored in (another process's change comes with the next poll, this process's at once). So a
 * `removed` hint takes effect at once (revocation must not wait), and every hint is followed by
 * one read of the user's groups, shared by all hints and connects of that user meanwhile; the
 * hub is then made to match that read. A removal hinted during a read is not undone by it; the
 * read is repeated instead. A revoke announced before it is stored (`pending`) keeps its group
 * out of every read until its confirmation or a grant's hint arrives. Whatever the interleaving,
 * connections end in the stored groups.
 */
export class MembershipSync {
  readonly #store: MembershipStore;
  readonly #hub: HubBinding;
  readonly #onError: (error: unknown) => void;
  readonly #retryDelayMs: number;
  readonly #resyncLimit: ReturnType<typeof pLimit>;
  readonly #pendingRevokeMs: number;
  readonly #history: Pick<MessageHistory, "mark"> | undefined;
  readonly #connections = new Map<string, Connection>();
  readonly #users = new Map<string, User>();
  readonly #unwatch: () => void;
  readonly #unsubscribe: (() => void) | undefined;
  readonly #presence: Presence | undefined;
  readonly #reporter: PresenceSource | undefined;
  /** Users whose presence changed this turn: reported together, once each, in a microtask. */
  readonly #present = new Set<string>();
  #closed = false;

  constructor(options: MembershipSyncOptions) {
    this.#store = options.store;
    this.#hub = options.hub;
    this.#retryDelayMs = options.retryDelayMs ?? 2_000;
    this.#resyncLimit = pLimit(options.resyncConcurrency ?? 16);
    this.#pendingRevokeMs = options.pendingRevokeMs ?? 5_000;
    this.#history = options.history;
    this.#presence = options.presence;
    this.#reporter = options.presence?.source();
    this.#unsubscribe = options.onPresence && options.presence?.subscribe(options.onPresence);
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: MembershipSync: ${String(error)}`));
    const { onChange } = options;
    this.#unwatch = this.#store.watch((change) => {
      onChange?.(change);
      return this.#hint(change);
    });
  }

  /**
   * Registers a connection of `userId` and joins it to every group the store holds for the user.
   * Concurrent connects of one user share one `groupsOf`; a connect of a user who already has a
   * connection here shares its groups (one copy per user, kept current by `watch`) and reads
   * nothing, so a store is read at most once per user while the user stays connected.
   * `ready`, if given, is called with those groups once they are read, just before the
   * connection joins them and in the same turn: whatever it sends (a welcome, a protocol's
   * handshake answer) is sent before anything a group sends. It is not called for a connection
   * that disconnected meanwhile.
   * @returns the groups the connection is in, sorted.
   * @throws MembershipError `INVALID_ARGUMENT` for a bad user id or a connection id already
   * connected; the store's error when the read fails (the connection is then not registered).
   */
  async connect(
    connectionId: string,
    userId: string,
    ready?: (groups: string[]) => void,
  ): Promise<string[]> {
    this.#open();
    assertName("userId", userId);
    if (typeof connectionId !== "string" || this.#connections.has(connectionId)) {
      throw new MembershipError("INVALID_ARGUMENT", "connectionId must be a new, unique string");
    }
    const connection: Connection = { userId, ready: false };
    const started = performance.now();
    let read = true;
    this.#connections.set(connectionId, connection);
    const user = this.#user(userId);
    user.connections.add(connectionId);
    try {
      // Without a read in flight, the user's groups are the last read plus every hint since:
      // exactly what a new read would be kept at. Sharing them spares the store a read.
      if (user.loop === undefined && user.groups !== undefined) read = false;
      else await (user.loop ?? this.#read(userId));
      if (user.groups === undefined) await this.#read(userId);
    } catch (error) {
      this.disconnect(connectionId);
      throw error;
    }
    if (this.#connections.get(connectionId) !== connection) return [];
    const now = Date.now();
    for (const [group, expiresAt] of user.groups ?? [])
      if (expiresAt !== undefined && expiresAt <= now) this.#expire(user, group, expiresAt);
    connection.ready = true;
    this.#changed(userId);
    const groups = this.#sorted(user);
    ready?.(groups.slice());
    const joins: Promise<void>[] = [];
    for (const group of groups) {
      const joined = this.#join(connectionId, group, "connect");
      if (joined !== undefined) joins.push(joined);
    }
    await Promise.all(joins);
    if (diagnostics.rehydrate.hasSubscribers)
      diagnostics.rehydrate.publish({
        connectionId,
        userId,
        groups: groups.length,
        durationMs: performance.now() - started,
        read,
      });
    return this.groupsOfConnection(connectionId);
  }

  /** The user's groups, sorted: computed once per change, whatever the number of connections. */
  #sorted(user: User): string[] {
    user.sorted ??= [...(user.groups?.keys() ?? [])].sort();
    return user.sorted;
  }

  /** Forgets a connection. Idempotent; the hub is not called (the connection is gone). */
  disconnect(connectionId: string): void {
    const connection = this.#connections.get(connectionId);
    if (connection === undefined) return;
    this.#connections.delete(connectionId);
    if (connection.ready) this.#changed(connection.userId);
    const user = this.#users.get(connection.userId);
    user?.connections.delete(connectionId);
    if (user && user.connections.size === 0) this.#dropUser(connection.userId);
  }

  /**
   * Persists a grant, then joins every live connection of the user (a `granted` join).
   * Idempotent; a repeated grant moves the expiry. Resolves once this process's connections
   * are in the group.
   */
  async grant(userId: string, group: string, options?: AddToGroupOptions): Promise<void> {
    this.#open();
    await this.#store.addToGroup(userId, group, options);
    // Marked before the grant returns: a client resuming after it finds the mark, whichever
    // server it resumes on and however late the others learn of the grant.
    await this.#history?.mark(group, "added", userId).catch(() => undefined);
    await this.#settle({ type: "added", userId, group });
  }

  /**
   * Persists a revoke, then makes every live connection of the user leave the group.
   * `reason` is what the hub is told (`revoked` unless the user left by themselves).
   * @returns whether a live membership was removed.
   */
  async revoke(
    userId: string,
    group: string,
    reason: "revoked" | "left" = "revoked",
  ): Promise<boolean> {
    this.#open();
    assertName("userId", userId);
    assertName("group", group);
    // Marked first: a message published once the revoke returns is after the mark, whichever
    // process publishes it, so no replay can hand it to the user.
    // A mark that failed leaves the history owing a reset: no replay trusts it meanwhile.
    await this.#history?.mark(group, "removed", userId).catch(() => undefined);
    // The reason travels with the change, to every process watching the store.
    const removed = await this.#store.removeFromGroup(userId, group, { reason });
    await this.#settle(removedChange(userId, group, reason));
    return removed;
  }

  /** The live connections of `userId` (rehydrated or still connecting), in connect order. */
  connectionsOf(userId: string): string[] {
    return [...(this.#users.get(userId)?.connections ?? [])];
  }

  /** The groups a connection is in, sorted; `[]` for an unknown one, or one still connecting. */
  groupsOfConnection(connectionId: string): string[] {
    const connection = this.#connections.get(connectionId);
    const user = connection?.ready ? this.#users.get(connection.userId) : undefined;
    return user === undefined ? [] : this.#sorted(user).slice();
  }

  /**
   * Who is connected in a group now, on every server sharing the `presence` option; `undefined`
   * without one.
   */
  get presence(): PresenceView | undefined {
    return this.#presence;
  }

  /** Whether a connection is in `group` right now: the check to make before delivering to it. */
  isInGroup(connectionId: string, group: string): boolean {
    const connection = this.#connections.get(connectionId);
    if (!connection?.ready) return false;
    return this.#users.get(connection.userId)?.groups?.has(group) ?? false;
  }

  /** Stops watching and forgets every connection and timer. The store is left open (it is yours). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unwatch();
    this.#unsubscribe?.();
    for (const userId of [...this.#users.keys()]) this.#dropUser(userId);
    this.#connections.clear();
    this.#reporter?.close();
  }

  /**
   * After this instance's own write: the store has already emitted the change (the contract has
   * it emit synchronously), so its read is under way; wait for it. Hint only if it is not.
   */
  #settle(change: MembershipUpdate): Promise<void> {
    const loop = this.#users.get(change.userId)?.loop;
    // A failed read is reported (and retried) by whoever started it, a hint or a connect; the
    // write itself succeeded, so the caller is not told of it twice.
    return loop ? loop.catch(() => undefined) : this.#hint(change);
  }

  /**
   * Applies what a change says at once if it removes access, then re-reads the user's groups.
   * A `resync` (changes may have been missed) re-reads every user connected here, a few at once.
   */
  #hint(change: MembershipChange): Promise<void> {
    if (change.type === "resync") {
      if (this.#closed) return Promise.resolve();
      if (diagnostics.resync.hasSubscribers)
        diagnostics.resync.publish({ users: this.#users.size });
      return Promise.all(
        [...this.#users.keys()].map((userId) =>
          this.#resyncLimit(() =>
            this.#read(userId).catch((error: unknown) => this.#readFailed(userId, error)),
          ),
        ),
      ).then(() => undefined);
    }
    const user = this.#users.get(change.userId);
    if (this.#closed || user === undefined) return Promise.resolve();
    if (change.type === "added" || (change.type === "removed" && !change.pending))
      user.pending?.delete(change.group);
    if (change.type === "removed") {
      const reason = change.reason ?? "revoked";
      user.removedDuringRead ??= new Set();
      user.removedDuringRead.add(change.group);
      if (change.pending) this.#holdPending(change.userId, user, change.group);
      this.#clearTimer(user, change.group);
      if (this.#remove(user, change.group, reason) > 0) this.#applied(change, reason, user);
    }
    return this.#read(change.userId).then(
      () => {
        if (change.type === "added") this.#applied(change, "granted", user);
      },
      (error: unknown) => this.#readFailed(change.userId, error),
    );
  }

  #applied(change: MembershipUpdate, reason: JoinReason | LeaveReason, user: User): void {
    if (!diagnostics.change.hasSubscribers || user.connections.size === 0) return;
    const at = writtenAt(change);
    diagnostics.change.publish({
      type: change.type,
      userId: change.userId,
      group: change.group,
      reason,
      connections: user.connections.size,
      ...(at !== undefined && { lagMs: Math.max(0, Date.now() - at) }),
    });
  }

  /**
   * Reads the user's groups and makes every connection of the user match, again while changes
   * keep arriving. Reads are shared: calls during a read join the loop.
   */
  #read(userId: string): Promise<void> {
    const user = this.#users.get(userId);
    if (user === undefined) return Promise.resolve();
    user.dirty = true;
    user.loop ??= (async () => {
      try {
        await Promise.resolve(); // calls of the same tick share the read
        while (user.dirty && !this.#closed && user.connections.size > 0) {
          user.dirty = false;
          user.removedDuringRead = undefined;
          this.#apply(user, await this.#store.groupsOf(userId));
        }
      } finally {
        // In the same step as the last check of `dirty`: a call that comes after it must start
        // a new loop, not join one that has already decided to stop.
        user.loop = undefined;
      }
    })();
    return user.loop;
  }

  /** Holds `group` out of reads until its revoke is confirmed, for `pendingRevokeMs` at most. */
  #holdPending(userId: string, user: User, group: string): void {
    const until = Date.now() + this.#pendingRevokeMs;
    user.pending ??= new Map();
    user.pending.set(group, until);
    clearTimeout(user.pendingTimer);
    user.pendingTimer = setTimeout(() => {
      user.pendingTimer = undefined;
      for (const [g, t] of user.pending ?? []) if (t <= Date.now()) user.pending?.delete(g);
      this.#read(userId).catch((error: unknown) => this.#readFailed(userId, error));
    }, this.#pendingRevokeMs + 1);
    user.pendingTimer.unref();
  }

  #readFailed(userId: string, error: unknown): void {
    this.#onError(error);
    const user = this.#users.get(userId);
    if (user === undefined || this.#closed) return;
    // Removals were applied already; what may be missing is a grant. Read again later.
    const retry = setTimeout(() => {
      this.#read(userId).catch((e: unknown) => this.#readFailed(userId, e));
    }, this.#retryDelayMs);
    retry.unref();
  }

  #apply(user: User, memberships: Membership[]): void {
    const now = Date.now();
    const stored = new Map<string, number | undefined>();
    for (const m of memberships) {
      const expiresAt = m.expiresAt?.getTime();
      if (
        (expiresAt === undefined || expiresAt > now) &&
        !user.removedDuringRead?.has(m.group) &&
        !((user.pending?.get(m.group) ?? 0) > now)
      ) {
        stored.set(m.group, expiresAt);
      }
    }
    const known = user.groups ?? new Map<string, number | undefined>();
    for (const [group, expiresAt] of known) {
      if (stored.has(group)) continue;
      const expired = expiresAt !== undefined && expiresAt <= now;
      this.#remove(user, group, expired ? "expired" : "revoked");
    }
    user.groups = known;
    for (const [group, expiresAt] of stored) {
      const joined = known.has(group);
      known.set(group, expiresAt);
      if (joined) continue;
      user.sorted = undefined;
      let ready = 0;
      for (const id of user.connections) {
        if (!this.#connections.get(id)?.ready) continue;
        ready++;
        void this.#join(id, group, "granted");
      }
      if (ready > 0) this.#changed(user.userId);
    }
    for (const group of user.timers?.keys() ?? [])
      if (!stored.has(group)) this.#clearTimer(user, group);
    for (const [group, expiresAt] of stored)
      if (expiresAt !== undefined) this.#schedule(user, group, expiresAt);
  }

  /** Takes `group` from the user and its ready connections; how many connections left it. */
  #remove(user: User, group: string, reason: LeaveReason): number {
    if (!user.groups?.delete(group)) return 0;
    user.sorted = undefined;
    let moved = 0;
    for (const id of user.connections) {
      if (!this.#connections.get(id)?.ready) continue;
      moved++;
      void this.#leave(id, group, reason);
    }
    if (moved > 0) this.#changed(user.userId);
    return moved;
  }

  /** A membership ran out: every connection of the user leaves the group. */
  #expire(user: User, group: string, expiresAt: number): void {
    const held = user.groups?.get(group);
    if (held === undefined || held > expiresAt) return;
    this.#clearTimer(user, group);
    if (this.#remove(user, group, "expired") > 0)
      this.#applied({ type: "removed", userId: user.userId, group }, "expired", user);
  }

  /** One timer per user and group; re-armed past setTimeout's limit of about 24.8 days. */
  #schedule(user: User, group: string, expiresAt: number): void {
    this.#clearTimer(user, group);
    const timer = setTimeout(
      () => {
        user.timers?.delete(group);
        if (Date.now() < expiresAt) return this.#schedule(user, group, expiresAt);
        this.#expire(user, group, expiresAt);
      },
      Math.max(0, Math.min(expiresAt - Date.now(), MAX_TIMER)),
    );
    user.timers ??= new Map();
    user.timers.set(group, timer);
  }

  #clearTimer(user: User, group: string): void {
    clearTimeout(user.timers?.get(group));
    user.timers?.delete(group);
  }

  /**
   * The user's presence changed (a connection ready or gone, a group gained or lost): reported
   * once for every change of this turn, as the whole truth (ready connections, their groups).
   */
  #changed(userId: string): void {
    if (this.#reporter === undefined || this.#closed) return;
    if (this.#present.size === 0) queueMicrotask(() => this.#report());
    this.#present.add(userId);
  }

  #report(): void {
    for (const userId of this.#present) {
      const user = this.#users.get(userId);
      let ready = 0;
      for (const id of user?.connections ?? []) if (this.#connections.get(id)?.ready) ready++;
      this.#reporter?.set(userId, ready, user && ready > 0 ? this.#sorted(user) : []);
    }
    this.#present.clear();
  }

  /** Calls the hub; a promise only if the hub's join is asynchronous (20,000 joins, no promises). */
  #join(connectionId: string, group: string, reason: JoinReason): Promise<void> | undefined {
    return this.#call(() => this.#hub.join(connectionId, group, reason));
  }

  #leave(connectionId: string, group: string, reason: LeaveReason): Promise<void> | undefined {
    return this.#call(() => this.#hub.leave(connectionId, group, reason));
  }

  #call(operation: () => void | Promise<void>): Promise<void> | undefined {
    try {
      const done = operation();
      return done === undefined ? undefined : done.catch((error: unknown) => this.#onError(error));
    } catch (error) {
      this.#onError(error);
      return undefined;
    }
  }

  #user(userId: string): User {
    let user = this.#users.get(userId);
    if (user === undefined) {
      user = {
        userId,
        connections: new Set(),
        groups: undefined,
        sorted: undefined,
        loop: undefined,
        dirty: false,
        removedDuringRead: undefined,
        pending: undefined,
        pendingTimer: undefined,
        timers: undefined,
      };
      this.#users.set(userId, user);
    }
    return user;
  }

  #dropUser(userId: string): void {
    const user = this.#users.get(userId);
    for (const timer of user?.timers?.values() ?? []) clearTimeout(timer);
    clearTimeout(user?.pendingTimer);
    this.#users.delete(userId);
  }

  #open(): void {
    if (this.#closed) throw new MembershipError("CLOSED", "the MembershipSync is closed");
  }
}
