import type {
  AddToGroupOptions,
  Membership,
  MembershipChange,
  MembershipStore,
} from "../contract.js";
import { MembershipError } from "../contract.js";
import { assertName } from "../validate.js";

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
   * Called when the hub binding fails to join or leave, or a change cannot be applied.
   * Default: a process warning. Never thrown into `grant`, `revoke` or a store listener.
   */
  onError?: (error: unknown) => void;
}

/** Per connection: its user, and the groups it is in with their expiry (undefined = never). */
interface Connection {
  readonly userId: string;
  readonly groups: Map<string, number | undefined>;
  ready: boolean;
}

/** A `groupsOf` in flight, shared by concurrent connects, with the changes seen meanwhile. */
interface Read {
  readonly memberships: Promise<Membership[]>;
  readonly changes: MembershipChange[];
  waiting: number;
}

interface User {
  readonly connections: Set<string>;
  read: Read | undefined;
  readonly timers: Map<string, NodeJS.Timeout>;
}

const MAX_TIMER = 2 ** 31 - 1;

/**
 * Joins a {@link MembershipStore} to any hub server.
 *
 * `connect` rehydrates a connection's groups from the store; `grant` and `revoke` persist first
 * and then join or leave every live connection of the user; changes from other processes arrive
 * through `store.watch` and are applied the same way. Applying a change twice is harmless, and
 * a membership's `expiresAt` makes its connections leave on time.
 */
export class MembershipSync {
  readonly #store: MembershipStore;
  readonly #hub: HubBinding;
  readonly #onError: (error: unknown) => void;
  readonly #connections = new Map<string, Connection>();
  readonly #users = new Map<string, User>();
  /** Reasons of this instance's own revokes in flight, so their echo from `watch` carries it. */
  readonly #reasons = new Map<string, LeaveReason>();
  readonly #unwatch: () => void;
  #closed = false;

  constructor(options: MembershipSyncOptions) {
    this.#store = options.store;
    this.#hub = options.hub;
    this.#onError =
      options.onError ??
      ((error) => process.emitWarning(`hub-membership: MembershipSync: ${String(error)}`));
    this.#unwatch = this.#store.watch((change) => this.#dispatch(change));
  }

  /**
   * Registers a connection of `userId` and joins it to every group the store holds for the user.
   * Concurrent connects of one user share one `groupsOf`. A change that lands while the store is
   * being read is applied after the read, so a revoke during connect is never lost.
   * @returns the groups the connection is in, sorted.
   * @throws MembershipError `INVALID_ARGUMENT` for a bad user id or a connection id already
   * connected; `STORE_UNAVAILABLE` when the read fails (the connection is then not registered).
   */
  async connect(connectionId: string, userId: string): Promise<string[]> {
    this.#open();
    assertName("userId", userId);
    if (typeof connectionId !== "string" || this.#connections.has(connectionId)) {
      throw new MembershipError("INVALID_ARGUMENT", "connectionId must be a new, unique string");
    }
    const connection: Connection = { userId, groups: new Map(), ready: false };
    const user = this.#user(userId);
    this.#connections.set(connectionId, connection);
    user.connections.add(connectionId);

    // Registered before reading: from here on every change for this user is seen, either by
    // the read or by `read.changes`.
    let read = user.read;
    if (read === undefined) {
      read = { memberships: this.#store.groupsOf(userId), changes: [], waiting: 0 };
      user.read = read;
    }
    read.waiting++;
    let memberships: Membership[];
    try {
      memberships = await read.memberships;
    } catch (error) {
      this.#release(user, read);
      this.disconnect(connectionId);
      throw error;
    }
    this.#release(user, read);
    if (this.#connections.get(connectionId) !== connection) return [];

    // The final state first (snapshot, then what changed during the read), so a group revoked
    // meanwhile is never joined at all.
    const now = Date.now();
    for (const m of memberships) connection.groups.set(m.group, m.expiresAt?.getTime());
    for (const change of read.changes) {
      if (change.type === "added") connection.groups.set(change.group, change.expiresAt?.getTime());
      else connection.groups.delete(change.group);
    }
    for (const [group, expiresAt] of connection.groups) {
      if (expiresAt !== undefined && expiresAt <= now) connection.groups.delete(group);
    }
    connection.ready = true;
    const joins: Promise<void>[] = [];
    for (const [group, expiresAt] of connection.groups) {
      this.#schedule(userId, group, expiresAt);
      joins.push(this.#join(connectionId, group, "connect"));
    }
    await Promise.all(joins);
    return this.groupsOfConnection(connectionId);
  }

  /** Forgets a connection. Idempotent; the hub is not called (the connection is gone). */
  disconnect(connectionId: string): void {
    const connection = this.#connections.get(connectionId);
    if (connection === undefined) return;
    this.#connections.delete(connectionId);
    const user = this.#users.get(connection.userId);
    user?.connections.delete(connectionId);
    if (user && user.connections.size === 0 && user.read === undefined)
      this.#dropUser(connection.userId);
  }

  /**
   * Persists a grant, then joins every live connection of the user (a `granted` join).
   * Idempotent; a repeated grant moves the expiry.
   */
  async grant(userId: string, group: string, options?: AddToGroupOptions): Promise<void> {
    this.#open();
    await this.#store.addToGroup(userId, group, options);
    const expiresAt = options?.expiresAt;
    this.#dispatch(
      expiresAt ? { type: "added", userId, group, expiresAt } : { type: "added", userId, group },
    );
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
    const key = `${userId}\u0000${group}`;
    this.#reasons.set(key, reason);
    try {
      const removed = await this.#store.removeFromGroup(userId, group);
      this.#dispatch({ type: "removed", userId, group });
      return removed;
    } finally {
      this.#reasons.delete(key);
    }
  }

  /** The live connections of `userId` (rehydrated or still connecting), in connect order. */
  connectionsOf(userId: string): string[] {
    return [...(this.#users.get(userId)?.connections ?? [])];
  }

  /** The groups a connection is in, sorted; `[]` for an unknown connection. */
  groupsOfConnection(connectionId: string): string[] {
    return [...(this.#connections.get(connectionId)?.groups.keys() ?? [])].sort();
  }

  /** Whether a connection is in `group` right now: the check to make before delivering to it. */
  isInGroup(connectionId: string, group: string): boolean {
    return this.#connections.get(connectionId)?.groups.has(group) ?? false;
  }

  /** Stops watching and forgets every connection and timer. The store is left open (it is yours). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unwatch();
    for (const userId of [...this.#users.keys()]) this.#dropUser(userId);
    this.#connections.clear();
  }

  #dispatch(change: MembershipChange): void {
    if (this.#closed) return;
    const user = this.#users.get(change.userId);
    if (user === undefined) return;
    user.read?.changes.push(change);
    for (const connectionId of user.connections) {
      const connection = this.#connections.get(connectionId);
      if (connection?.ready) this.#applyTo(connectionId, connection, change);
    }
    if (change.type === "added")
      this.#schedule(change.userId, change.group, change.expiresAt?.getTime());
    else this.#schedule(change.userId, change.group, undefined);
  }

  #applyTo(connectionId: string, connection: Connection, change: MembershipChange): void {
    const { group } = change;
    if (change.type === "added") {
      const expiresAt = change.expiresAt?.getTime();
      if (expiresAt !== undefined && expiresAt <= Date.now()) return;
      const known = connection.groups.has(group);
      connection.groups.set(group, expiresAt);
      if (!known) void this.#join(connectionId, group, "granted");
    } else if (connection.groups.delete(group)) {
      const reason = this.#reasons.get(`${change.userId}\u0000${group}`) ?? "revoked";
      void this.#leave(connectionId, group, reason);
    }
  }

  /** One timer per user and group, at the latest expiry any of its connections holds. */
  #schedule(userId: string, group: string, expiresAt: number | undefined): void {
    const user = this.#users.get(userId);
    if (user === undefined) return;
    clearTimeout(user.timers.get(group));
    user.timers.delete(group);
    if (expiresAt === undefined) return;
    const delay = expiresAt - Date.now();
    // setTimeout overflows past 2^31-1 ms (about 24.8 days): wake up then and look again.
    const timer = setTimeout(
      () => {
        user.timers.delete(group);
        if (Date.now() < expiresAt) return this.#schedule(userId, group, expiresAt);
        this.#expire(userId, group, expiresAt);
      },
      Math.max(0, Math.min(delay, MAX_TIMER)),
    );
    user.timers.set(group, timer);
  }

  #expire(userId: string, group: string, expiresAt: number): void {
    for (const connectionId of this.connectionsOf(userId)) {
      const connection = this.#connections.get(connectionId);
      const held = connection?.groups.get(group);
      if (connection && held !== undefined && held <= expiresAt) {
        connection.groups.delete(group);
        void this.#leave(connectionId, group, "expired");
      }
    }
  }

  async #join(connectionId: string, group: string, reason: JoinReason): Promise<void> {
    try {
      await this.#hub.join(connectionId, group, reason);
    } catch (error) {
      this.#onError(error);
    }
  }

  async #leave(connectionId: string, group: string, reason: LeaveReason): Promise<void> {
    try {
      await this.#hub.leave(connectionId, group, reason);
    } catch (error) {
      this.#onError(error);
    }
  }

  #user(userId: string): User {
    let user = this.#users.get(userId);
    if (user === undefined) {
      user = { connections: new Set(), read: undefined, timers: new Map() };
      this.#users.set(userId, user);
    }
    return user;
  }

  #release(user: User, read: Read): void {
    read.waiting--;
    if (read.waiting === 0 && user.read === read) user.read = undefined;
  }

  #dropUser(userId: string): void {
    const user = this.#users.get(userId);
    for (const timer of user?.timers.values() ?? []) clearTimeout(timer);
    this.#users.delete(userId);
  }

  #open(): void {
    if (this.#closed) throw new MembershipError("CLOSED", "the MembershipSync is closed");
  }
}
