import { afterEach, describe, expect, it } from "vitest";
import { MembershipError, type MembershipStore, type MembershipUpdate } from "../contract.js";
import { EVERY_CODE_POINT_NAMES, HOSTILE_NAMES, INVALID_NAMES } from "./hostile-names.js";

export {
  type HarnessConnection,
  type HubHarness,
  type HubHarnessFactory,
  testHubBinding,
} from "./hubs.js";
export { type PresenceFactory, testPresence } from "./presence.js";
export { EVERY_CODE_POINT_NAMES, HOSTILE_NAMES, INVALID_NAMES };

type Awaitable<T> = T | Promise<T>;

/** How to get stores for {@link testMembershipStore}. */
export interface MembershipStoreFactory {
  /** A store on fresh, empty storage. Called once per test; the suite closes it. */
  create(): Awaitable<MembershipStore>;
  /**
   * Another instance on the same storage as `store`, for stores shared across instances and
   * processes: the suite then checks that `watch` on one sees changes made through the other.
   */
  sibling?(store: MembershipStore): Awaitable<MembershipStore>;
}

export interface ConformanceOptions {
  /** Per-test timeout in ms. Default 30,000. */
  timeout?: number;
  /** How long a change may take to reach a sibling's watcher. Default 10,000 ms. */
  watchTimeout?: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function collect<T>(source: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of source) items.push(item);
  return items;
}

/** Runs `work` in batches of `size` at once: enough parallelism for speed, little for the store. */
async function inBatches<T>(
  items: readonly T[],
  size: number,
  work: (item: T) => Promise<unknown>,
) {
  for (let i = 0; i < items.length; i += size)
    await Promise.all(items.slice(i, i + size).map(work));
}

/** Expects `call` to fail with `code`: as a rejection, or from the iteration (never a throw at the call). */
async function expectCode(code: MembershipError["code"], call: () => unknown): Promise<void> {
  let result: unknown;
  try {
    result = call();
  } catch (error) {
    expect.fail(`threw ${String(error)} at the call: the contract has errors arrive as rejections`);
  }
  const error = await (async () => {
    if (result && typeof result === "object" && Symbol.asyncIterator in result) {
      await collect(result as AsyncIterable<unknown>);
    } else {
      await result;
    }
  })().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected ${code}`).toBeInstanceOf(MembershipError);
  expect((error as MembershipError).code).toBe(code);
}

const expectInvalid = (call: () => unknown) => expectCode("INVALID_ARGUMENT", call);

/**
 * The conformance suite of the {@link MembershipStore} contract, for vitest. Every store in this
 * package runs it; run it against yours:
 *
 * ```ts
 * import { testMembershipStore } from "hub-membership/testing";
 * testMembershipStore("MyStore", { create: () => new MyStore() });
 * ```
 */
export function testMembershipStore(
  name: string,
  factory: MembershipStoreFactory,
  options: ConformanceOptions = {},
): void {
  const watchTimeout = options.watchTimeout ?? 10_000;
  describe(`MembershipStore conformance: ${name}`, { timeout: options.timeout ?? 30_000 }, () => {
    const opened: MembershipStore[] = [];
    const open = async (): Promise<MembershipStore> => {
      const store = await factory.create();
      opened.push(store);
      return store;
    };
    /** What a watcher saw: the updates, and apart from them how many `resync`s. */
    const watched = (store: MembershipStore) => {
      const changes: MembershipUpdate[] = [];
      const seen = { resyncs: 0 };
      const stop = store.watch((change) => {
        if (change.type === "resync") seen.resyncs++;
        else changes.push(change);
      });
      return { changes, seen, stop };
    };
    afterEach(async () => {
      await Promise.all(opened.splice(0).map((store) => store.close()));
    });

    it("grants, reads back and revokes a membership", async () => {
      const store = await open();
      const before = Date.now();
      await store.addToGroup("alice", "room");
      expect(await store.isMember("alice", "room")).toBe(true);
      expect(await store.isMember("alice", "other")).toBe(false);
      expect(await store.isMember("bob", "room")).toBe(false);
      const [membership, ...rest] = await store.groupsOf("alice");
      expect(rest).toEqual([]);
      expect(membership?.userId).toBe("alice");
      expect(membership?.group).toBe("room");
      expect(membership?.expiresAt).toBeUndefined();
      expect(membership?.addedAt).toBeInstanceOf(Date);
      expect(membership?.addedAt.getTime()).toBeGreaterThanOrEqual(before - 1_000);
      expect(membership?.addedAt.getTime()).toBeLessThanOrEqual(Date.now() + 1_000);
      expect((await collect(store.membersOf("room"))).map((m) => m.userId)).toEqual(["alice"]);
      expect(await store.countMembers("room")).toBe(1);

      expect(await store.removeFromGroup("alice", "room")).toBe(true);
      expect(await store.isMember("alice", "room")).toBe(false);
      expect(await store.groupsOf("alice")).toEqual([]);
      expect(await collect(store.membersOf("room"))).toEqual([]);
      expect(await store.countMembers("room")).toBe(0);
    });

    it("answers empty for unknown users and groups", async () => {
      const store = await open();
      expect(await store.groupsOf("nobody")).toEqual([]);
      expect(await collect(store.membersOf("nowhere"))).toEqual([]);
      expect(await store.countMembers("nowhere")).toBe(0);
      expect(await store.removeUser("nobody")).toBe(0);
      expect(await store.deleteGroup("nowhere")).toBe(0);
    });

    it("is idempotent: a second grant keeps one membership, a second revoke returns false", async () => {
      const store = await open();
      const { changes } = watched(store);
      await store.addToGroup("alice", "room");
      await store.addToGroup("alice", "room");
      expect(await store.countMembers("room")).toBe(1);
      expect(await store.groupsOf("alice")).toHaveLength(1);
      expect(await store.removeFromGroup("alice", "room")).toBe(true);
      expect(await store.removeFromGroup("alice", "room")).toBe(false);
      expect(await store.removeFromGroup("carol", "room")).toBe(false);
      expect(changes).toEqual([
        { type: "added", userId: "alice", group: "room" },
        { type: "added", userId: "alice", group: "room" },
        { type: "removed", userId: "alice", group: "room" },
      ]);
    });

    it("replaces expiresAt on a repeated grant; no expiresAt means never", async () => {
      const store = await open();
      const soon = new Date(Date.now() + 60_000);
      const later = new Date(Date.now() + 120_000);
      await store.addToGroup("alice", "room", { expiresAt: soon });
      expect((await store.groupsOf("alice"))[0]?.expiresAt?.getTime()).toBe(soon.getTime());
      await store.addToGroup("alice", "room", { expiresAt: later });
      expect((await store.groupsOf("alice"))[0]?.expiresAt?.getTime()).toBe(later.getTime());
      const [fromGroup] = await collect(store.membersOf("room"));
      expect(fromGroup?.expiresAt?.getTime()).toBe(later.getTime());
      await store.addToGroup("alice", "room");
      expect((await store.groupsOf("alice"))[0]?.expiresAt).toBeUndefined();
      expect((await collect(store.membersOf("room")))[0]?.expiresAt).toBeUndefined();
    });

    it("hides expired memberships from every read", async () => {
      const store = await open();
      const expiresAt = new Date(Date.now() + 800);
      await store.addToGroup("alice", "brief", { expiresAt });
      await store.addToGroup("alice", "lasting");
      await store.addToGroup("bob", "brief");
      expect(await store.isMember("alice", "brief")).toBe(true);
      expect(await store.countMembers("brief")).toBe(2);
      await sleep(expiresAt.getTime() - Date.now() + 50);
      expect(await store.isMember("alice", "brief")).toBe(false);
      expect((await store.groupsOf("alice")).map((m) => m.group)).toEqual(["lasting"]);
      expect((await collect(store.membersOf("brief"))).map((m) => m.userId)).toEqual(["bob"]);
      expect(await store.countMembers("brief")).toBe(1);
      const { changes } = watched(store);
      expect(await store.removeFromGroup("alice", "brief")).toBe(false);
      expect(changes).toEqual([]);
      await store.addToGroup("alice", "brief");
      expect(await store.isMember("alice", "brief")).toBe(true);
    });

    it("memberships() streams every live membership once, hostile names exactly, expired ones not", async () => {
      const store = await open();
      const names = HOSTILE_NAMES.slice(0, 20);
      await store.addMany(
        names.map((userId, i) => ({ userId, group: names[(i + 1) % 20] as string })),
      );
      await store.addToGroup("alice", "lasting");
      await store.addToGroup("alice", "brief", { expiresAt: new Date(Date.now() + 300) });
      await sleep(400);
      const all = await collect(store.memberships());
      const pairs = all.map((m) => JSON.stringify([m.userId, m.group])).sort();
      const expected = [
        ...names.map((userId, i) => JSON.stringify([userId, names[(i + 1) % 20]])),
        JSON.stringify(["alice", "lasting"]),
      ].sort();
      expect(pairs).toEqual(expected);
      expect(all.every((m) => m.addedAt instanceof Date)).toBe(true);
    });

    it("sorts groupsOf by ordinal code-unit order", async () => {
      const store = await open();
      const groups = [
        "b",
        "B",
        "a",
        "é",
        "Z",
        "😀",
        "Ａ",
        "aa",
        "a a",
        "a\u0000",
        "10",
        "9",
        "\uFFFF",
      ];
      for (const group of groups) await store.addToGroup("alice", group);
      const expected = [...groups].sort();
      expect((await store.groupsOf("alice")).map((m) => m.group)).toEqual(expected);
    });

    it("keeps case twins apart", async () => {
      const store = await open();
      await store.addToGroup("Alice", "Sports");
      await store.addToGroup("alice", "sports");
      expect(await store.isMember("Alice", "sports")).toBe(false);
      expect(await store.isMember("alice", "Sports")).toBe(false);
      expect((await store.groupsOf("Alice")).map((m) => m.group)).toEqual(["Sports"]);
      expect((await collect(store.membersOf("sports"))).map((m) => m.userId)).toEqual(["alice"]);
      expect(await store.removeFromGroup("alice", "Sports")).toBe(false);
      expect(await store.isMember("alice", "sports")).toBe(true);
    });

    it(`round-trips ${HOSTILE_NAMES.length} hostile names exactly, as users and as groups`, async () => {
      const store = await open();
      await inBatches(HOSTILE_NAMES, 10, async (hostile) => {
        await store.addToGroup(hostile, "plain-group");
        await store.addToGroup("plain-user", hostile);
      });
      const groups = (await store.groupsOf("plain-user")).map((m) => m.group);
      expect(groups).toEqual([...HOSTILE_NAMES].sort());
      const users = (await collect(store.membersOf("plain-group"))).map((m) => m.userId).sort();
      expect(users).toEqual([...HOSTILE_NAMES].sort());
      expect(await store.countMembers("plain-group")).toBe(HOSTILE_NAMES.length);
      for (const hostile of HOSTILE_NAMES) {
        expect(await store.isMember(hostile, "plain-group"), JSON.stringify(hostile)).toBe(true);
        expect((await store.groupsOf(hostile)).map((m) => m.group)).toEqual(["plain-group"]);
        expect((await collect(store.membersOf(hostile))).map((m) => m.userId)).toEqual([
          "plain-user",
        ]);
      }
      const [first, second] = HOSTILE_NAMES as [string, string];
      expect(await store.removeFromGroup(first, "plain-group")).toBe(true);
      expect(await store.deleteGroup(second)).toBe(1);
      expect(await store.countMembers("plain-group")).toBe(HOSTILE_NAMES.length - 1);
      expect(await store.groupsOf("plain-user")).toHaveLength(HOSTILE_NAMES.length - 1);
    });

    it("batched operations take every hostile name and every code point, exactly", async () => {
      const store = await open();
      const { changes } = watched(store);
      const names = [...HOSTILE_NAMES, ...EVERY_CODE_POINT_NAMES];
      const sorted = [...names].sort();
      // Many names in one partition: a store with transactions sends them together.
      expect(await store.addMany(names.map((group) => ({ userId: "batcher", group })))).toBe(
        names.length,
      );
      expect(await store.addMany(names.map((userId) => ({ userId, group: "batched" })))).toBe(
        names.length,
      );
      expect((await store.groupsOf("batcher")).map((m) => m.group)).toEqual(sorted);
      const members = await collect(store.membersOf("batched"));
      expect(members.map((m) => m.userId).sort()).toEqual(sorted);
      expect(await store.isMember(names[names.length - 1] as string, "batched")).toBe(true);
      expect(await store.removeUser("batcher")).toBe(names.length);
      expect(await store.deleteGroup("batched")).toBe(names.length);
      expect(await store.groupsOf("batcher")).toEqual([]);
      expect(await store.countMembers("batched")).toBe(0);
      const removed = changes.filter((c) => c.type === "removed");
      expect(
        removed
          .map((c) => c.group)
          .slice(0, names.length)
          .sort(),
      ).toEqual(sorted);
      expect(
        removed
          .map((c) => c.userId)
          .slice(names.length)
          .sort(),
      ).toEqual(sorted);
    });

    it("streams more than 1,000 members and counts them exactly", async () => {
      const store = await open();
      const users = Array.from({ length: 1_050 }, (_, i) => `user-${i}`);
      await inBatches(users, 50, (user) => store.addToGroup(user, "crowd"));
      await store.addToGroup("late", "crowd", { expiresAt: new Date(Date.now() + 60_000) });
      const members = await collect(store.membersOf("crowd"));
      expect(members).toHaveLength(1_051);
      expect(new Set(members.map((m) => m.userId)).size).toBe(1_051);
      expect(members.every((m) => m.group === "crowd")).toBe(true);
      expect(await store.countMembers("crowd")).toBe(1_051);
    });

    it("addMany grants in bulk, across partitions and past 100 per partition, once per pair", async () => {
      const store = await open();
      const { changes } = watched(store);
      const expiresAt = new Date(Date.now() + 60_000);
      const users = Array.from({ length: 250 }, (_, i) => `bulk-user-${i}`);
      const groups = Array.from({ length: 150 }, (_, i) => `bulk-group-${i}`);
      const grants = [
        { userId: "twice", group: "bulk", expiresAt },
        ...users.map((userId) => ({ userId, group: "bulk" })),
        ...groups.map((group) => ({ userId: "solo", group, expiresAt })),
        { userId: "twice", group: "bulk" }, // the last one wins: never expires
      ];
      expect(await store.addMany(grants)).toBe(401);
      expect(changes).toHaveLength(401);
      expect(changes[0]).toEqual({ type: "added", userId: "twice", group: "bulk" });
      expect(changes[1]).toEqual({ type: "added", userId: "bulk-user-0", group: "bulk" });
      expect(await store.countMembers("bulk")).toBe(251);
      expect((await store.groupsOf("twice"))[0]?.expiresAt).toBeUndefined();
      const solo = await store.groupsOf("solo");
      expect(solo.map((m) => m.group)).toEqual([...groups].sort());
      expect(solo.every((m) => m.expiresAt?.getTime() === expiresAt.getTime())).toBe(true);
      expect(await store.isMember("bulk-user-249", "bulk")).toBe(true);
      expect(await store.countMembers("bulk-group-7")).toBe(1);

      expect(await store.addMany(grants)).toBe(401); // idempotent
      expect(await store.countMembers("bulk")).toBe(251);
      expect(await store.addMany([])).toBe(0);
    });

    it("addMany validates every grant first: one bad grant changes nothing", async () => {
      const store = await open();
      const { changes } = watched(store);
      const good = { userId: "alice", group: "room" };
      const call = store as unknown as { addMany(grants: unknown): Promise<number> };
      for (const bad of [
        ...INVALID_NAMES.map((name) => ({ userId: name, group: "room" })),
        ...INVALID_NAMES.map((name) => ({ userId: "alice", group: name })),
        { userId: "alice", group: "room", expiresAt: new Date(Date.now() - 1) },
        { userId: "alice", group: "room", expiresAt: "tomorrow" },
        null,
        "alice",
      ]) {
        await expectInvalid(() => call.addMany([good, bad]));
      }
      for (const notIterable of [undefined, null, 7, { userId: "alice", group: "room" }]) {
        await expectInvalid(() => call.addMany(notIterable));
      }
      await expect(call.addMany([good, { userId: "", group: "room" }])).rejects.toThrow(
        /grants\[1\]/,
      );
      expect(changes).toEqual([]);
      expect(await store.groupsOf("alice")).toEqual([]);
    });

    it("removeUser removes every membership of the user, on both sides, and only those", async () => {
      const store = await open();
      const groups = Array.from({ length: 130 }, (_, i) => `g${i}`);
      await inBatches(groups, 25, (group) => store.addToGroup("alice", group));
      await store.addToGroup("alice", "brief", { expiresAt: new Date(Date.now() + 500) });
      await store.addToGroup("bob", "g0");
      await sleep(600);
      const { changes } = watched(store);
      expect(await store.removeUser("alice")).toBe(130);
      expect(changes).toHaveLength(130);
      expect(changes.every((c) => c.type === "removed" && c.userId === "alice")).toBe(true);
      expect(new Set(changes.map((c) => c.group))).toEqual(new Set(groups));
      expect(await store.groupsOf("alice")).toEqual([]);
      expect((await collect(store.membersOf("g0"))).map((m) => m.userId)).toEqual(["bob"]);
      expect(await store.countMembers("g1")).toBe(0);
      expect(await store.isMember("bob", "g0")).toBe(true);
      expect(await store.removeUser("alice")).toBe(0);
    });

    it("deleteGroup removes every membership of the group, on both sides, and only those", async () => {
      const store = await open();
      const users = Array.from({ length: 130 }, (_, i) => `u${i}`);
      await inBatches(users, 25, (user) => store.addToGroup(user, "doomed"));
      await store.addToGroup("u0", "kept");
      const { changes } = watched(store);
      expect(await store.deleteGroup("doomed")).toBe(130);
      expect(changes).toHaveLength(130);
      expect(changes.every((c) => c.type === "removed" && c.group === "doomed")).toBe(true);
      expect(await store.countMembers("doomed")).toBe(0);
      expect(await store.isMember("u5", "doomed")).toBe(false);
      expect((await store.groupsOf("u0")).map((m) => m.group)).toEqual(["kept"]);
      expect(await store.deleteGroup("doomed")).toBe(0);
    });

    it("rejects invalid names and options with INVALID_ARGUMENT and changes nothing", async () => {
      const store = await open();
      await store.addToGroup("alice", "room");
      const { changes } = watched(store);
      const past = new Date(Date.now() - 1);
      const badOptions: unknown[] = [
        { expiresAt: past },
        { expiresAt: new Date(Number.NaN) },
        { expiresAt: "2999-01-01T00:00:00Z" },
        { expiresAt: Date.now() + 60_000 },
        "2999-01-01",
        null,
      ];
      const call = store as unknown as Record<string, (...args: unknown[]) => unknown>;
      for (const bad of INVALID_NAMES) {
        for (const args of [
          ["addToGroup", bad, "room"],
          ["addToGroup", "alice", bad],
          ["removeFromGroup", bad, "room"],
          ["removeFromGroup", "alice", bad],
          ["isMember", bad, "room"],
          ["isMember", "alice", bad],
          ["groupsOf", bad],
          ["membersOf", bad],
          ["countMembers", bad],
          ["removeUser", bad],
          ["deleteGroup", bad],
        ] as const) {
          const [method, ...rest] = args;
          await expectInvalid(() => call[method]?.apply(store, rest));
        }
      }
      for (const bad of badOptions) {
        await expectInvalid(() => call.addToGroup?.call(store, "alice", "other", bad));
        await expectInvalid(() => call.addToGroup?.call(store, "alice", "room", bad));
      }
      for (const reason of ["expired", "LEFT", "", 1])
        await expectInvalid(() => call.removeFromGroup?.call(store, "alice", "room", { reason }));
      expect(changes).toEqual([]);
      const [membership] = await store.groupsOf("alice");
      expect(membership?.group).toBe("room");
      expect(membership?.expiresAt).toBeUndefined();
      expect(await store.groupsOf("alice")).toHaveLength(1);
    });

    it("watch delivers changes in order, with expiresAt, until unsubscribed", async () => {
      const store = await open();
      const expiresAt = new Date(Date.now() + 60_000);
      const first = watched(store);
      const second = watched(store);
      await store.addToGroup("alice", "a", { expiresAt });
      await store.addToGroup("alice", "b");
      await store.removeFromGroup("alice", "a");
      first.stop();
      first.stop();
      await store.removeFromGroup("alice", "b");
      const expected: MembershipUpdate[] = [
        { type: "added", userId: "alice", group: "a", expiresAt },
        { type: "added", userId: "alice", group: "b" },
        { type: "removed", userId: "alice", group: "a" },
      ];
      expect(first.changes).toEqual(expected);
      expect(second.changes).toEqual([
        ...expected,
        { type: "removed", userId: "alice", group: "b" },
      ]);
    });

    const { sibling } = factory;
    // Registered only for shared stores, so an in-memory store reports no skipped test.
    if (sibling)
      it("watch delivers changes made through another instance", async () => {
        const store = await open();
        const other = await sibling(store);
        opened.push(other);
        const { changes } = watched(store);
        // A change made before the subscription is established may come as a `resync` instead:
        // write until one is seen, then hold the feed to every change.
        let warm = 0;
        await expect
          .poll(
            async () => {
              await other.addToGroup("warm", `up-${warm++}`);
              return changes.some((c) => c.userId === "warm");
            },
            { timeout: watchTimeout, interval: 200 },
          )
          .toBe(true);
        changes.length = 0;
        const expiresAt = new Date(Date.now() + 60_000);
        await other.addToGroup("alice", "room", { expiresAt });
        await other.addToGroup("bob", "room");
        await other.addToGroup("bob", "lounge");
        await other.removeFromGroup("alice", "room");
        await other.removeFromGroup("bob", "lounge", { reason: "left" }); // carried everywhere
        await other.removeUser("bob");
        const expected: MembershipUpdate[] = [
          { type: "added", userId: "alice", group: "room", expiresAt },
          { type: "added", userId: "bob", group: "room" },
          { type: "added", userId: "bob", group: "lounge" },
          { type: "removed", userId: "alice", group: "room" },
          { type: "removed", userId: "bob", group: "lounge", reason: "left" },
          { type: "removed", userId: "bob", group: "room" },
        ];
        await expect
          .poll(() => changes.filter((c) => c.userId !== "warm").length, {
            timeout: watchTimeout,
          })
          .toBeGreaterThanOrEqual(6);
        // A revoke may be announced before it is stored (`pending`); its confirmation follows.
        for (const [i, c] of changes.entries()) {
          if (c.type !== "removed" || !c.pending) continue;
          const confirmed = changes
            .slice(i + 1)
            .some((d) => d.userId === c.userId && d.group === c.group && !("pending" in d));
          expect(confirmed, `${JSON.stringify(c)} confirmed`).toBe(true);
        }
        const settled = changes.filter((c) => !(c.type === "removed" && c.pending));
        // At least once: duplicates are allowed, but the first sighting of each is in order per user.
        const firsts = settled.filter(
          (c, i) => settled.findIndex((d) => JSON.stringify(d) === JSON.stringify(c)) === i,
        );
        for (const user of ["alice", "bob"]) {
          expect(firsts.filter((c) => c.userId === user)).toEqual(
            expected.filter((c) => c.userId === user),
          );
        }
        expect(await store.isMember("bob", "room")).toBe(false);
      });

    it("throws CLOSED after close; close is idempotent", async () => {
      const store = await open();
      await store.close();
      await store.close();
      const closed = await store.isMember("alice", "room").then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(closed).toBeInstanceOf(MembershipError);
      expect((closed as MembershipError).code).toBe("CLOSED");
      await expect(store.addToGroup("alice", "room")).rejects.toMatchObject({ code: "CLOSED" });
      await expectCode("CLOSED", () => store.membersOf("room"));
      await expectCode("CLOSED", () => store.addMany([{ userId: "alice", group: "room" }]));
      expect(() => store.watch(() => {})).toThrow(MembershipError);
    });
  });
}
