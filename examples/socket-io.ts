import { createServer } from "node:http";
import { Server } from "socket.io";
import { bindSocketIo } from "../adapters/hubs/socket-io.js";
import { InMemoryMembershipStore } from "../adapters/index.js";

declare function userOf(token: unknown): string | undefined; // your auth
const store = new InMemoryMembershipStore(); // or AzureTableMembershipStore, below
const io = new Server(createServer((_, res) => res.writeHead(404).end()).listen(8081));
io.use((socket, next) => {
  socket.data.userId = userOf(socket.handshake.auth.token);
  next(socket.data.userId ? undefined : new Error("unauthorized"));
});
const sync = bindSocketIo(io, {
  store,
  userIdOf: (socket) => socket.data.userId, // the socket joins its stored groups' rooms first
  onLeave: (socket, group, reason) => socket.emit("removed", { group, reason }),
});
io.on("connection", (socket) => {
  socket.on("send", (message) => {
    const { group, text } = Object(message); // a client may send anything, or nothing
    if (sync.isInGroup(socket.id, group)) io.to(group).emit("message", { group, text });
  });
});
await sync.revoke("alice", "Sports"); // alice's sockets leave the room, on every server
