import { afterEach, describe, expect, it, vi } from "vitest";
import { MembershipError } from "../contract.js";
import type { Presence, PresenceEvent } from "../presence/presence.js";
import { HOSTILE_NAMES, INVALID_NAMES } from "./hostile-names.js";

/** How to get presences for {@link testPresence}. */
export interface PresenceFactory {
  /**
   * Two presences on one fresh, empty backing, as two servers would hold them (the same object
   * twice for an in-process presence), already started. The suite closes them.
   */
  create(): Promise<readonly [Presence, Presence]>;
}

/** Retries `check` until it passes, for up to 5 s: a shared backing settles within moments. */
const eventually = (check: () => Promise<void>) =>
  vi.waitFor(check, { timeout: 5_000, interval: 20 });

/**
 * The presence conformance suite: every rule of the `Presence` contract, on the presences
 * `factory` makes. Call it from a test file: `testPresence("MemoryPresence", { create })`.
 */
export function testPresence(name: string, factory: PresenceFactory): void {
  describe(`Presence conformance: ${name}`, () => {
    let open: Presence[] = [];
    afterEach(async () => {
      await Promise.all(open.map((presence) => presence.close()));
      open = [];
    });
    const servers = async () => {
      const pair = await factory.create();
      open.push(...new Set(pair));
      return pair;
    };

    it("counts users and connections of a group over every source, and lists them", async () => {
      const [a, b] = await servers();
      const here = a.source();
      const there = b.source();
      here.set("ann", 2, ["room", "ops"]);
      there.set("ann", 1, ["room"]);
      there.set("bob", 1, ["room"]);
      there.set("cy", 1, []);
      await eventually(async () => {
        expect(await b.count("room")).toEqual({ users: 2, connections: 4 });
        expect(await a.count("ops")).toEqual({ users: 1, connections: 2 });
        expect(await a.count("nowhere")).toEqual({ users: 0, connections: 0 });
        expect(await a.total()).toEqual({ users: 3, connections: 5 });
        expect(await b.online("room")).toEqual({ users: ["ann", "bob"] });
      });
      // A group named twice in one report is one group.
      here.set("dee", 1, ["twice", "twice"]);
      await eventually(async () =>
        expect(await b.count("twice")).toEqual({ users: 1, connections: 1 }),
      );
      here.set("dee", 0, []);
      expect(await a.isOnline("cy")).toBe(true);
      expect(await a.isOnline("cy", "room")).toBe(false);
      expect(await b.isOnline("ann", "ops")).toBe(true);
      // ann's connections here leave ops (a revoke): ops is empty, room keeps ann through b.
      here.set("ann", 2, ["room"]);
      there.set("bob", 0, []);
      await eventually(async () => {
        expect(await a.count("ops")).toEqual({ users: 0, connections: 0 });
        expect(await a.count("room")).toEqual({ users: 1, connections: 3 });
        expect(await b.isOnline("bob")).toBe(false);
        expect(await b.total()).toEqual({ users: 2, connections: 4 });
      });
    });

    it("tells each server once per user and group, not once per connection", async () => {
      const [a, b] = await servers();
      const names = b === a ? ["a"] : ["a", "b"];
      const seen = new Map<string, PresenceEvent[]>(names.map((at) => [at, []]));
      a.subscribe((event) => seen.get("a")?.push(event));
      if (b !== a) b.subscribe((event) => seen.get("b")?.push(event));
      const here = a.source();
      const there = b.source();
      const step = async (set: () => void, until: () => Promise<boolean>) => {
        set();
        await eventually(async () => expect(await until()).toBe(true));
      };
      await step(
        () => here.set("ann", 1, ["room"]),
        async () => (await b.count("room")).connections === 1,
      );
      // More connections, then one server's all go: ann stays online through the other.
      await step(
        () => there.set("ann", 3, ["room"]),
        async () => (await a.count("room")).connections === 4,
      );
      await step(
        () => here.set("ann", 0, []),
        async () => (await b.count("room")).connections === 3,
      );
      await step(
        () => there.set("ann", 3, ["room", "ops"]),
        async () => (await a.count("ops")).users === 1,
      );
      await step(
        () => there.set("ann", 0, []),
        async () => (await a.total()).users === 0,
      );
      const event = (group: string, online: boolean) => ({ group, userId: "ann", online });
      const expected = [
        event("room", true),
        event("ops", true),
        event("ops", false),
        event("room", false),
      ];
      // The last change took ann out of both groups at once: those two come in either order.
      const inOrder = (events: PresenceEvent[] = []) => [
        ...events.slice(0, 2),
        ...events.slice(2).sort((x, y) => (x.group < y.group ? -1 : 1)),
      ];
      await eventually(async () => {
        for (const at of names) expect(inOrder(seen.get(at))).toEqual(expected);
      });
      // Nothing more arrives.
      await new Promise((resolve) => setTimeout(resolve, 100));
      for (const at of names) expect(seen.get(at)).toHaveLength(expected.length);
    });

    it("pages through any number of users, sorted, each once", async () => {
      const [a, b] = await servers();
      const source = a.source();
      const users = Array.from({ length: 2_345 }, (_, i) => `u${i}`);
      for (const userId of users) source.set(userId, 1, ["big"]);
      await eventually(async () => expect((await b.count("big")).users).toBe(users.length));
      const listed: string[] = [];
      let after: string | undefined;
      let pages = 0;
      do {
        const page = await b.online("big", { limit: 1_000, ...(after !== undefined && { after }) });
        listed.push(...page.users);
        after = page.next;
        pages++;
      } while (after !== undefined);
      expect(pages).toBe(3);
      expect(listed).toEqual([...users].sort());
    });

    it("round-trips hostile names exactly, as users and as groups", async () => {
      const [a, b] = await servers();
      const source = a.source();
      for (const name of HOSTILE_NAMES) source.set(name, 1, [name, "all"]);
      await eventually(async () =>
        expect((await b.count("all")).users).toBe(new Set(HOSTILE_NAMES).size),
      );
      for (const name of HOSTILE_NAMES) {
        expect(await b.online(name)).toEqual({ users: [name] });
        expect(await b.isOnline(name, name)).toBe(true);
      }
      const listed = (await b.online("all", { limit: 10_000 })).users;
      expect(new Set(listed)).toEqual(new Set(HOSTILE_NAMES));
    });

    it("refuses bad input with INVALID_ARGUMENT and changes nothing", async () => {
      const [a] = await servers();
      const source = a.source();
      const invalid = async (call: () => unknown) => {
        let thrown: unknown;
        try {
          await call();
        } catch (error) {
          thrown = error;
        }
        expect(thrown).toBeInstanceOf(MembershipError);
        expect((thrown as MembershipError).code).toBe("INVALID_ARGUMENT");
      };
      for (const bad of INVALID_NAMES) {
        await invalid(() => a.count(bad as string));
        await invalid(() => a.online(bad as string));
        await invalid(() => a.isOnline(bad as string));
        if (bad !== undefined) await invalid(() => a.online("room", { after: bad as string }));
        await invalid(() => source.set(bad as string, 1, ["room"]));
        await invalid(() => source.set("ann", 1, [bad as string]));
      }
      for (const limit of [0, -1, 1.5, 10_001, Number.NaN])
        await invalid(() => a.online("room", { limit }));
      for (const connections of [-1, 0.5, Number.NaN])
        await invalid(() => source.set("ann", connections, []));
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await a.total()).toEqual({ users: 0, connections: 0 });
    });

    it("a closed source's users go offline, and it reports nothing more", async () => {
      const [a, b] = await servers();
      const source = a.source();
      const other = b.source();
      source.set("ann", 1, ["room"]);
      other.set("bob", 1, ["room"]);
      await eventually(async () => expect((await b.count("room")).users).toBe(2));
      source.close();
      source.set("cy", 1, ["room"]);
      await eventually(async () => expect(await b.online("room")).toEqual({ users: ["bob"] }));
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await a.isOnline("cy")).toBe(false);
    });
  });
}
