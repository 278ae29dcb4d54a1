/**
 * Idle heap per connection of WsGroups, or of the least a server must keep to broadcast by group
 * and to leave every group on disconnect (a map of sets each way), in a fresh process:
 * `node --expose-gc --import tsx bench/group-memory.ts wsgroups|plain CONNECTIONS GROUPS POOL`.
 * Prints bytes per connection. Fake sockets, the same in both.
 */
import { WsGroups } from "../adapters/hubs/ws-groups.js";

const [kind, connections = 5_000, groupsPerConnection = 10, pool = 500] = [
  process.argv[2],
  ...process.argv.slice(3).map(Number),
];
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with --expose-gc");
const ids = Array.from({ length: connections }, () => crypto.randomUUID());
const names = Array.from({ length: pool }, (_, i) => `room-${i}`);
const sockets = ids.map(() => ({ readyState: 1, bufferedAmount: 0, send() {}, terminate() {} }));
const groupOf = (i: number, k: number) => names[(i + k * 25) % pool] as string;

function wsGroups() {
  const groups = new WsGroups();
  ids.forEach((id, i) => {
    groups.add(id, sockets[i] as (typeof sockets)[number]);
    for (let k = 0; k < groupsPerConnection; k++) groups.join(id, groupOf(i, k));
  });
  return groups;
}

function plain() {
  const byGroup = new Map<string, Set<object>>();
  const byConnection = new Map<string, { socket: object; groups: Set<string> }>();
  ids.forEach((id, i) => {
    const socket = sockets[i] as object;
    const mine = new Set<string>();
    byConnection.set(id, { socket, groups: mine });
    for (let k = 0; k < groupsPerConnection; k++) {
      const group = groupOf(i, k);
      mine.add(group);
      const members = byGroup.get(group) ?? new Set<object>();
      if (members.size === 0) byGroup.set(group, members);
      members.add(socket);
    }
  });
  return [byGroup, byConnection];
}

if (kind !== "wsgroups" && kind !== "plain") throw new Error("wsgroups or plain");
gc();
gc();
const before = process.memoryUsage().heapUsed;
const kept = kind === "wsgroups" ? wsGroups() : plain();
gc();
gc();
const after = process.memoryUsage().heapUsed;
console.log(String((after - before) / connections));
if (kept === undefined) process.exit(1); // kept alive until measured
