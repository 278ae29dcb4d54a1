import { MembershipError } from "../contract.js";
import { assertName } from "../validate.js";
import { MAX_ONLINE_PAGE, type OnlineQuery, type PresenceSource } from "./presence.js";

/** What this process's sources say of one user: its connections, and how many are in each group. */
export interface Contribution {
  readonly connections: number;
  readonly groups: ReadonlyMap<string, number>;
}

const NONE: Contribution = { connections: 0, groups: new Map() };

/**
 * Every source of this process, summed per user: what the process contributes to presence.
 * `changed` hears of each user whose contribution a source changed, with what it was before.
 */
export class Sources {
  readonly #users = new Map<string, Map<number, { n: number; groups: readonly string[] }>>();
  readonly #open = new Set<number>();
  #next = 0;

  constructor(readonly changed: (userId: string, before: Contribution) => void) {}

  /** A new source: each of its reports checked, then recorded and told to `changed`. */
  source(): PresenceSource {
    const id = this.#next++;
    this.#open.add(id);
    return {
      set: (userId, connections, groups) => {
        assertReport(userId, connections, groups);
        if (!this.#open.has(id)) return;
        const before = this.of(userId);
        this.#set(id, userId, connections, groups);
        this.changed(userId, before);
      },
      close: () => this.#close(id),
    };
  }

  /** Withdraws every source's users, each told to `changed`; later reports are ignored. */
  closeAll(): void {
    for (const id of [...this.#open]) this.#close(id);
  }

  #close(id: number): void {
    if (!this.#open.delete(id)) return;
    for (const [userId, bySource] of this.#users) {
      if (!bySource.has(id)) continue;
      const before = this.of(userId);
      this.#set(id, userId, 0, []);
      this.changed(userId, before);
    }
  }

  #set(source: number, userId: string, connections: number, groups: readonly string[]): void {
    let bySource = this.#users.get(userId);
    if (connections > 0) {
      if (bySource === undefined) {
        bySource = new Map();
        this.#users.set(userId, bySource);
      }
      // A name given twice is one group: counted once.
      bySource.set(source, { n: connections, groups: [...new Set(groups)] });
    } else if (bySource?.delete(source) && bySource.size === 0) this.#users.delete(userId);
  }

  of(userId: string): Contribution {
    const bySource = this.#users.get(userId);
    if (bySource === undefined) return NONE;
    let connections = 0;
    const groups = new Map<string, number>();
    for (const { n, groups: names } of bySource.values()) {
      connections += n;
      for (const group of names) groups.set(group, (groups.get(group) ?? 0) + n);
    }
    return { connections, groups };
  }

  users(): IterableIterator<string> {
    return this.#users.keys();
  }
}

/** A source's `set` arguments, checked: a reporter's bug must not corrupt every server's counts. */
export function assertReport(userId: string, connections: number, groups: readonly string[]): void {
  assertName("userId", userId);
  if (!Number.isSafeInteger(connections) || connections < 0)
    throw new MembershipError("INVALID_ARGUMENT", "connections must be a whole number ≥ 0");
  for (const group of groups) assertName("group", group);
}

/** A page query, checked, with its default. */
export function pageOf(group: string, query: OnlineQuery = {}): { after?: string; limit: number } {
  assertName("group", group);
  const { after, limit = 1_000 } = query;
  if (after !== undefined) assertName("userId", after);
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_ONLINE_PAGE)
    throw new MembershipError("INVALID_ARGUMENT", `limit must be 1 to ${MAX_ONLINE_PAGE}`);
  return { ...(after !== undefined && { after }), limit };
}
