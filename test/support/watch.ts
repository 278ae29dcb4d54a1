import type { MembershipStore, MembershipUpdate } from "../../adapters/index.js";

/** Everything `store`'s watch delivers from now on: the updates, and apart from them the resyncs. */
export function watchChanges(store: MembershipStore) {
  const seen = { updates: [] as MembershipUpdate[], resyncs: 0 };
  store.watch((change) => {
    if (change.type === "resync") seen.resyncs++;
    else seen.updates.push(change);
  });
  return seen;
}
