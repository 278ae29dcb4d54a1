import { expect } from "vitest";
import type {
  HistoryMark,
  HistoryMessage,
  MessageHistory,
} from "../../adapters/history/history.js";
import { InMemoryMembershipStore } from "../../adapters/index.js";

const text = (entry: HistoryMessage | HistoryMark) =>
  "payload" in entry ? entry.payload.toString() : `${entry.type}:${entry.userId}`;

/** What `MessageHistory.recent` promises, on a history made by `create`. */
export async function checkRecent(
  create: (store: InMemoryMembershipStore) => Promise<MessageHistory>,
): Promise<void> {
  const history = await create(new InMemoryMembershipStore());
  try {
    expect(await history.recent("Empty", 5)).toMatchObject({ entries: [], marked: true });
    await history.publish("Room/#1", Buffer.from("one"));
    await history.mark("Room/#1", "added", "Ann");
    await history.publish("Room/#1", Buffer.from("two"));
    await history.publish("Room/#1", Buffer.from("thrée"));
    await history.mark("Room/#1", "removed", "Bob");
    await history.publish("Room/#1", Buffer.from("four"));
    await history.publish("other", Buffer.from("elsewhere"));
    const all = await history.recent("Room/#1", 10);
    expect(all.entries.map(text)).toEqual([
      "one",
      "added:Ann",
      "two",
      "thrée",
      "removed:Bob",
      "four",
    ]);
    expect([all.marked, all.complete]).toEqual([true, true]);
    const last = await history.recent("Room/#1", 2);
    expect(last.entries.map(text)).toEqual(["thrée", "removed:Bob", "four"]);
    expect([last.marked, last.complete]).toEqual([true, false]);
    // A client goes on from the position: at or after the last message read.
    const newest = last.entries.at(-1) as HistoryMessage;
    expect(history.compare(last.position, newest.position)).toBeGreaterThanOrEqual(0);
    for (const count of [0, -1, 1.5, 1_001, Number.NaN])
      await expect(history.recent("Room/#1", count)).rejects.toMatchObject({
        code: "INVALID_ARGUMENT",
      });
    await expect(history.recent("", 1)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    // After a reset, marks may be missing from what came before: nothing before it is marked.
    await history.reset();
    expect((await history.recent("Room/#1", 1)).marked).toBe(false);
    // Redis's reset holds for what comes in its millisecond too.
    await new Promise((resolve) => setTimeout(resolve, 5));
    await history.publish("Room/#1", Buffer.from("five"));
    const after = await history.recent("Room/#1", 1);
    expect([after.entries.map(text), after.marked]).toEqual([["five"], true]);
  } finally {
    await history.close();
  }
}
