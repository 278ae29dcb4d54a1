import { createServer } from "node:http";
import { WebSocketServer } from "ws";
import { bindWs } from "../adapters/hubs/ws.js";
import { InMemoryMembershipStore } from "../adapters/index.js";

declare function userOf(authorization: string | undefined): string | undefined; // your auth
declare function parse(data: unknown): { group: string; text: string } | undefined; // your protocol
const store = new InMemoryMembershipStore(); // or AzureTableMembershipStore, below
const hub = bindWs(new WebSocketServer({ noServer: true }), {
  store,
  userIdOf: (request) => userOf(request.headers.authorization), // undefined: 401, no socket
  onConnection: ({ id }, groups) => hub.send(id, JSON.stringify({ welcome: groups })),
  onLeave: ({ id }, group, reason) => hub.send(id, JSON.stringify({ removed: group, reason })),
  onMessage: async ({ id, userId }, data) => {
    const { group, text } = parse(data) ?? {}; // never trust a frame: undefined if malformed
    if (group !== undefined && hub.isInGroup(id, group))
      await hub.broadcast(group, JSON.stringify({ userId, text }));
  },
});
const server = createServer((_, res) => res.writeHead(426).end()).listen(8080); // 426: ws only
server.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));

await hub.grant("alice", "Sports"); // every connection of alice joins Sports
await hub.revoke("alice", "Sports"); // ... and leaves it: nothing more from Sports reaches them
