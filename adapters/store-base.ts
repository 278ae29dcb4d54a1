import type {
  AddToGroupOptions,
  Membership,
  MembershipChange,
  MembershipGrant,
  MembershipStore,
  MembershipUpdate,
  RemoveReason,
} from "./contract.js";
import { MembershipError } from "./contract.js";
import { Listeners } from "./listeners.js";
import {
  addedChange,
  assertName,
  assertOpen,
  byGroup,
  readExpiresAt,
  readGrants,
  removedChange,
} from "./validate.js";

/** A validated grant: one per (user, group), `expiresAt` in the future or absent. */
export type Grant = MembershipUpdate & { type: "added" };

/** Whether a stored membership still counts at `now`. */
export const isLive = (m: { expiresAt?: Date | undefined }, now: number) =>
  m.expiresAt === undefined || m.expiresAt.getTime() > now;

/**
 * The contract's rules, applied once for every store: argument validation before any storage
 * call, `CLOSED`, expiry on every read, the order of `groupsOf`, and `watch` (this instance's
 * changes delivered synchronously after their write; other instances' through
 * {@link subscribeRemote}). A store extends it and implements storage: the protected methods,
 * which get valid arguments only and may return expired memberships.
 */
export abstract class MembershipStoreBase implements MembershipStore {
  readonly #listeners = new Listeners();
  #unsubscribeRemote: (() => void) | undefined;
  #closed = false;

  /** Writes `grants` (one per pair). Resolves once every one counts. */
  protected abstract writeGrants(grants: readonly Grant[]): Promise<void>;
  /** Removes one membership. @returns whether a live one was removed. */
  /** Removes one membership; a storage whose changes travel announces them with `reason`. */
  protected abstract removeOne(
    userId: string,
    group: string,
    reason: RemoveReason,
  ): Promise<boolean>;
  /** The stored membership of the pair, expired or not. */
  protected abstract readOne(userId: string, group: string): Promise<Membership | undefined>;
  /** The stored memberships of a user, expired or not, in any order. */
  protected abstract readUser(userId: string): Promise<Membership[]>;
  /** The stored memberships of a group, expired or not, in any order. */
  protected abstract readGroup(group: string): AsyncIterable<Membership>;
  /** Every stored membership, expired or not, each once, in any order. */
  protected abstract readAll(): AsyncIterable<Membership>;
  /** Removes every membership of a user or a group. @returns the live ones removed. */
  protected abstract removeAll(side: "user" | "group", name: string): Promise<MembershipUpdate[]>;
  /**
   * The live members of a group, counted by the storage (`isLive` at `now`), where it can do so
   * cheaper than reading every membership. Default: `undefined`, and the base counts `readGroup`.
   */
  protected countLive(_group: string, _now: number): Promise<number> | undefined {
    return undefined;
  }
  /** Delivers changes made through other instances, from the first `watch` on. Default: none. */
  protected subscribeRemote(
    _deliver: (change: MembershipChange) => void,
  ): (() => void) | undefined {
    return undefined;
  }
  /** Releases what the storage holds. */
  protected async closeStorage(): Promise<void> {}

  async addToGroup(userId: string, group: string, options?: AddToGroupOptions): Promise<void> {
    this.assertOpen();
    assertName("userId", userId);
    assertName("group", group);
    const grant = addedChange(userId, group, readExpiresAt(options)) as Grant;
    await this.writeGrants([grant]);
    this.#listeners.emit(grant);
  }

  async addMany(grants: Iterable<MembershipGrant>): Promise<number> {
    this.assertOpen();
    const unique = readGrants(grants);
    if (unique.length === 0) return 0;
    await this.writeGrants(unique);
    for (const grant of unique) this.#listeners.emit(grant);
    return unique.length;
  }

  async removeFromGroup(
    userId: string,
    group: string,
    options?: { reason?: RemoveReason },
  ): Promise<boolean> {
    this.assertOpen();
    assertName("userId", userId);
    assertName("group", group);
    const reason = options?.reason ?? "revoked";
    if (reason !== "revoked" && reason !== "left")
      throw new MembershipError("INVALID_ARGUMENT", 'reason must be "revoked" or "left"');
    const removed = await this.removeOne(userId, group, reason);
    if (removed) this.#listeners.emit(removedChange(userId, group, reason));
    return removed;
  }

  async isMember(userId: string, group: string): Promise<boolean> {
    this.assertOpen();
    assertName("userId", userId);
    assertName("group", group);
    const membership = await this.readOne(userId, group);
    return membership !== undefined && isLive(membership, Date.now());
  }

  async groupsOf(userId: string): Promise<Membership[]> {
    this.assertOpen();
    assertName("userId", userId);
    const now = Date.now();
    return (await this.readUser(userId)).filter((m) => isLive(m, now)).sort(byGroup);
  }

  membersOf(group: string): AsyncIterable<Membership> {
    const store = this;
    return (async function* () {
      store.assertOpen();
      assertName("group", group);
      const now = Date.now();
      for await (const membership of store.readGroup(group))
        if (isLive(membership, now)) yield membership;
    })();
  }

  memberships(): AsyncIterable<Membership> {
    const store = this;
    return (async function* () {
      store.assertOpen();
      const now = Date.now();
      for await (const membership of store.readAll()) if (isLive(membership, now)) yield membership;
    })();
  }

  async countMembers(group: string): Promise<number> {
    this.assertOpen();
    assertName("group", group);
    const counted = this.countLive(group, Date.now());
    if (counted !== undefined) return counted;
    let count = 0;
    for await (const _ of this.membersOf(group)) count++;
    return count;
  }

  async removeUser(userId: string): Promise<number> {
    this.assertOpen();
    assertName("userId", userId);
    return this.#removed(await this.removeAll("user", userId));
  }

  async deleteGroup(group: string): Promise<number> {
    this.assertOpen();
    assertName("group", group);
    return this.#removed(await this.removeAll("group", group));
  }

  watch(listener: (change: MembershipChange) => void): () => void {
    this.assertOpen();
    const unsubscribe = this.#listeners.add(listener);
    this.#unsubscribeRemote ??= this.subscribeRemote((change) => this.#listeners.emit(change));
    return () => {
      unsubscribe();
      if (this.#listeners.size > 0) return;
      this.#unsubscribeRemote?.();
      this.#unsubscribeRemote = undefined;
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribeRemote?.();
    this.#listeners.clear();
    await this.closeStorage();
  }

  /** Throws `CLOSED` once the store is closed: for a store's own extra methods. */
  protected assertOpen(): void {
    assertOpen(this.#closed);
  }

  #removed(changes: readonly MembershipUpdate[]): number {
    for (const change of changes) this.#listeners.emit(change);
    return changes.length;
  }
}
