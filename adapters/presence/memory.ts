import { Listeners } from "../listeners.js";
import { assertName } from "../validate.js";
import type {
  OnlinePage,
  OnlineQuery,
  Presence,
  PresenceCount,
  PresenceEvent,
  PresenceSource,
} from "./presence.js";
import { type Contribution, pageOf, Sources } from "./sources.js";

/**
 * Presence in this process: every hub binding of the process that shares it (a ws and a SignalR
 * endpoint, say) reports to it, and every read is exact at once. Events are emitted in the turn
 * of the change. Use `RedisPresence` for several servers.
 */
export class MemoryPresence implements Presence {
  readonly #sources = new Sources((userId, before) =>
    this.#apply(userId, before, this.#sources.of(userId)),
  );
  /** Per group: each online user's connections there, their sum, and the users sorted once. */
  readonly #groups = new Map<
    string,
    { users: Map<string, number>; connections: number; sorted: string[] | undefined }
  >();
  readonly #users = new Map<string, number>();
  #connections = 0;
  readonly #listeners = new Listeners<PresenceEvent>();

  source(): PresenceSource {
    return this.#sources.source();
  }

  async start(): Promise<void> {}

  async count(group: string): Promise<PresenceCount> {
    assertName("group", group);
    const online = this.#groups.get(group);
    return { users: online?.users.size ?? 0, connections: online?.connections ?? 0 };
  }

  async total(): Promise<PresenceCount> {
    return { users: this.#users.size, connections: this.#connections };
  }

  async online(group: string, query?: OnlineQuery): Promise<OnlinePage> {
    const { after, limit } = pageOf(group, query);
    const online = this.#groups.get(group);
    if (online === undefined) return { users: [] };
    // Sorted once per change, not per page: a group of 200,000 is paged in slices.
    online.sorted ??= [...online.users.keys()].sort();
    const sorted = online.sorted;
    let from = 0;
    if (after !== undefined) {
      let to = sorted.length;
      while (from < to) {
        const middle = (from + to) >>> 1;
        if ((sorted[middle] as string) <= after) from = middle + 1;
        else to = middle;
      }
    }
    const page = sorted.slice(from, from + limit);
    return from + limit < sorted.length
      ? { users: page, next: page.at(-1) as string }
      : { users: page };
  }

  async isOnline(userId: string, group?: string): Promise<boolean> {
    assertName("userId", userId);
    if (group === undefined) return this.#users.has(userId);
    assertName("group", group);
    return this.#groups.get(group)?.users.has(userId) ?? false;
  }

  subscribe(listener: (event: PresenceEvent) => void): () => void {
    return this.#listeners.add(listener);
  }

  async close(): Promise<void> {
    this.#listeners.clear();
    this.#sources.closeAll();
  }

  #apply(userId: string, before: Contribution, after: Contribution): void {
    const events: PresenceEvent[] = [];
    for (const [group, n] of before.groups)
      this.#add(group, userId, (after.groups.get(group) ?? 0) - n, events);
    for (const [group, n] of after.groups)
      if (!before.groups.has(group)) this.#add(group, userId, n, events);
    const delta = after.connections - before.connections;
    this.#connections += delta;
    if (after.connections > 0) this.#users.set(userId, after.connections);
    else this.#users.delete(userId);
    for (const event of events) this.#listeners.emit(event);
  }

  #add(group: string, userId: string, delta: number, events: PresenceEvent[]): void {
    if (delta === 0) return;
    let online = this.#groups.get(group);
    if (online === undefined) {
      online = { users: new Map(), connections: 0, sorted: undefined };
      this.#groups.set(group, online);
    }
    const n = (online.users.get(userId) ?? 0) + delta;
    online.connections += delta;
    if (n > 0) {
      if (!online.users.has(userId)) {
        events.push({ group, userId, online: true });
        online.sorted = undefined;
      }
      online.users.set(userId, n);
    } else {
      if (online.users.delete(userId)) {
        events.push({ group, userId, online: false });
        online.sorted = undefined;
      }
      if (online.users.size === 0) this.#groups.delete(group);
    }
  }
}
