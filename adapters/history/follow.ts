import type { MembershipStore } from "../contract.js";
import type { MessageHistory } from "./history.js";

/**
 * Marks every membership change the store announces (from any process) in its group's history,
 * and resets the history when the store says changes may have been missed. A revoke is marked
 * when announced, before it is stored if the store announces it `pending`; every process that
 * follows the store marks it, so the earliest mark counts.
 * @returns a function that stops following.
 */
export function followMemberships(store: MembershipStore, history: MessageHistory): () => void {
  return store.watch((change) => {
    if (change.type === "resync") void history.reset();
    // A failed mark is the history's to remember (it owes a reset); nobody waits for this one.
    else history.mark(change.group, change.type, change.userId).catch(() => undefined);
  });
}
