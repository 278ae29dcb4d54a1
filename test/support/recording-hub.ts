import type { HubBinding } from "../../adapters/index.js";

/** A hub that records what it was told, and the group sets that follow from it. */
export class RecordingHub implements HubBinding {
  readonly calls: string[] = [];
  readonly groups = new Map<string, Set<string>>();

  join(connectionId: string, group: string, reason?: string) {
    this.calls.push(`join ${connectionId} ${group} ${reason}`);
    const set = this.groups.get(connectionId) ?? new Set();
    this.groups.set(connectionId, set.add(group));
  }

  leave(connectionId: string, group: string, reason?: string) {
    this.calls.push(`leave ${connectionId} ${group} ${reason}`);
    this.groups.get(connectionId)?.delete(group);
  }

  /** The groups `connectionId` is in, sorted. */
  of(connectionId: string): string[] {
    return [...(this.groups.get(connectionId) ?? [])].sort();
  }
}
