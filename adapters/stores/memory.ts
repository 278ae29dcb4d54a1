import type {
  AddToGroupOptions,
  Membership,
  MembershipChange,
  MembershipGrant,
  MembershipStore,
} from "../contract.js";
import { Listeners } from "../listeners.js";
import {
  addedChange,
  assertName,
  assertOpen,
  byGroup,
  readExpiresAt,
  readGrants,
} from "../validate.js";

type Index = Map<string, Map<string, Membership>>;

const isLive = (m: Membership, now: number) =>
  m.expiresAt === undefined || m.expiresAt.getTime() > now;

/**
 * A {@link MembershipStore} held in this process's memory: for tests, single-process hubs and
 * as the reference the Azure store is held to. Nothing survives a restart; `watch` sees only
 * changes made through this instance.
 */
export class InMemoryMembershipStore implements MembershipStore {
  readonly #byUser: Index = new Map();
  readonly #byGroup: Index = new Map();
  readonly #listeners = new Listeners();
  #closed = false;

  async addToGroup(userId: string, group: string, options?: AddToGroupOptions): Promise<void> {
    this.#open();
    assertName("userId", userId);
    assertName("group", group);
    const expiresAt = readExpiresAt(options);
    const membership: Membership = { userId, group, addedAt: new Date(), expiresAt };
    if (expiresAt === undefined) delete (membership as { expiresAt?: Date }).expiresAt;
    put(this.#byUser, userId, group, membership);
    put(this.#byGroup, group, userId, membership);
    this.#listeners.emit(addedChange(userId, group, expiresAt));
  }

  async addMany(grants: Iterable<MembershipGrant>): Promise<number> {
    this.#open();
    const changes = readGrants(grants);
    const addedAt = new Date();
    for (const change of changes) {
      const { userId, group, expiresAt } = change;
      const membership: Membership = expiresAt
        ? { userId, group, addedAt, expiresAt }
        : { userId, group, addedAt };
      put(this.#byUser, userId, group, membership);
      put(this.#byGroup, group, userId, membership);
    }
    for (const change of changes) this.#listeners.emit(change);
    return changes.length;
  }

  async removeFromGroup(userId: string, group: string): Promise<boolean> {
    this.#open();
    assertName("userId", userId);
    assertName("group", group);
    const existing = this.#byUser.get(userId)?.get(group);
    if (existing === undefined) return false;
    drop(this.#byUser, userId, group);
    drop(this.#byGroup, group, userId);
    if (!isLive(existing, Date.now())) return false;
    this.#listeners.emit({ type: "removed", userId, group });
    return true;
  }

  async isMember(userId: string, group: string): Promise<boolean> {
    this.#open();
    assertName("userId", userId);
    assertName("group", group);
    const m = this.#byUser.get(userId)?.get(group);
    return m !== undefined && isLive(m, Date.now());
  }

  async groupsOf(userId: string): Promise<Membership[]> {
    this.#open();
    assertName("userId", userId);
    return this.#live(this.#byUser.get(userId)).sort(byGroup);
  }

  membersOf(group: string): AsyncIterable<Membership> {
    const store = this;
    return (async function* () {
      store.#open();
      assertName("group", group);
      yield* store.#live(store.#byGroup.get(group));
    })();
  }

  async countMembers(group: string): Promise<number> {
    this.#open();
    assertName("group", group);
    return this.#live(this.#byGroup.get(group)).length;
  }

  async removeUser(userId: string): Promise<number> {
    this.#open();
    assertName("userId", userId);
    const memberships = this.#live(this.#byUser.get(userId));
    for (const group of [...(this.#byUser.get(userId)?.keys() ?? [])])
      drop(this.#byGroup, group, userId);
    this.#byUser.delete(userId);
    for (const m of memberships) this.#listeners.emit({ type: "removed", userId, group: m.group });
    return memberships.length;
  }

  async deleteGroup(group: string): Promise<number> {
    this.#open();
    assertName("group", group);
    const memberships = this.#live(this.#byGroup.get(group));
    for (const userId of [...(this.#byGroup.get(group)?.keys() ?? [])])
      drop(this.#byUser, userId, group);
    this.#byGroup.delete(group);
    for (const m of memberships) this.#listeners.emit({ type: "removed", userId: m.userId, group });
    return memberships.length;
  }

  watch(listener: (change: MembershipChange) => void): () => void {
    this.#open();
    return this.#listeners.add(listener);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#listeners.clear();
  }

  #open(): void {
    assertOpen(this.#closed);
  }

  /** The live memberships of one index entry; expired ones are dropped from both indexes. */
  #live(memberships: Map<string, Membership> | undefined): Membership[] {
    const now = Date.now();
    const live: Membership[] = [];
    for (const m of [...(memberships?.values() ?? [])]) {
      if (isLive(m, now)) live.push(m);
      else {
        drop(this.#byUser, m.userId, m.group);
        drop(this.#byGroup, m.group, m.userId);
      }
    }
    return live;
  }
}

function put(index: Index, outer: string, inner: string, m: Membership): void {
  const entries = index.get(outer) ?? new Map<string, Membership>();
  if (entries.size === 0) index.set(outer, entries);
  entries.set(inner, m);
}

function drop(index: Index, outer: string, inner: string): void {
  const entries = index.get(outer);
  if (entries?.delete(inner) && entries.size === 0) index.delete(outer);
}
