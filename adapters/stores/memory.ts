import type { Membership, MembershipUpdate, RemoveReason } from "../contract.js";
import { type Grant, isLive, MembershipStoreBase } from "../store-base.js";

type Index = Map<string, Map<string, Membership>>;

/**
 * A {@link MembershipStore} held in this process's memory: for tests, single-process hubs and
 * as the reference the Azure store is held to. Nothing survives a restart; `watch` sees only
 * changes made through this instance.
 */
export class InMemoryMembershipStore extends MembershipStoreBase {
  readonly #byUser: Index = new Map();
  readonly #byGroup: Index = new Map();

  protected async writeGrants(grants: readonly Grant[]): Promise<void> {
    const addedAt = new Date();
    for (const { userId, group, expiresAt } of grants) {
      const membership: Membership = expiresAt
        ? { userId, group, addedAt, expiresAt }
        : { userId, group, addedAt };
      put(this.#byUser, userId, group, membership);
      put(this.#byGroup, group, userId, membership);
    }
  }

  protected async removeOne(
    userId: string,
    group: string,
    _reason: RemoveReason,
  ): Promise<boolean> {
    const existing = this.#byUser.get(userId)?.get(group);
    if (existing === undefined) return false;
    this.#drop(existing);
    return isLive(existing, Date.now());
  }

  protected async readOne(userId: string, group: string): Promise<Membership | undefined> {
    return this.#byUser.get(userId)?.get(group);
  }

  protected async readUser(userId: string): Promise<Membership[]> {
    return this.#live(this.#byUser.get(userId));
  }

  protected async *readAll(): AsyncIterable<Membership> {
    for (const groups of [...this.#byUser.values()]) yield* [...groups.values()];
  }

  protected async *readGroup(group: string): AsyncIterable<Membership> {
    yield* this.#live(this.#byGroup.get(group));
  }

  protected async removeAll(side: "user" | "group", name: string): Promise<MembershipUpdate[]> {
    const index = side === "user" ? this.#byUser : this.#byGroup;
    const live = this.#live(index.get(name));
    for (const membership of live) this.#drop(membership);
    return live.map(({ userId, group }) => ({ type: "removed", userId, group }));
  }

  /** The live memberships of one index entry; expired ones are dropped from both indexes. */
  #live(memberships: Map<string, Membership> | undefined): Membership[] {
    const now = Date.now();
    const live: Membership[] = [];
    for (const m of [...(memberships?.values() ?? [])]) {
      if (isLive(m, now)) live.push(m);
      else this.#drop(m);
    }
    return live;
  }

  #drop({ userId, group }: Membership): void {
    drop(this.#byUser, userId, group);
    drop(this.#byGroup, group, userId);
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
