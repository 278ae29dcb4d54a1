import { createServer } from "node:http";
import { WebSocketServer } from "ws";
import { accessTokenOf, bindSignalR, HubError } from "../adapters/hubs/signalr.js";
import { InMemoryMembershipStore } from "../adapters/index.js";

declare function userOf(token: string | undefined): string | undefined; // your auth

const hub = bindSignalR(new WebSocketServer({ noServer: true }), {
  store: new InMemoryMembershipStore(), // or AzureTableMembershipStore
  path: "/chat",
  userIdOf: (request) => userOf(accessTokenOf(request)), // undefined: 401, no socket
  onConnection: ({ id }, groups) => hub.send(id, "welcome", { groups }),
  onLeave: ({ id }, group, reason) => hub.send(id, "removed", { group, reason }),
  methods: {
    Send: async ({ id, userId }, group, text) => {
      if (typeof group !== "string" || !hub.isInGroup(id, group)) throw new HubError("not_member");
      await hub.sendToGroup(group, "message", { group, from: userId, text });
    },
  },
});
// Answers every request: negotiate, 404 elsewhere (or `handleRequest(req, res, next)`: yours).
const server = createServer((req, res) => void hub.handleRequest(req, res)).listen(5000);
server.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
