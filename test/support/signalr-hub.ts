import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { HubConnection } from "@microsoft/signalr";
import { afterEach } from "vitest";
import { type WebSocket, WebSocketServer } from "ws";
import {
  accessTokenOf,
  bindSignalR,
  type SignalRBindingOptions,
} from "../../adapters/hubs/signalr.js";
import { InMemoryMembershipStore } from "../../adapters/index.js";

/** The user a request acts for: here its access token is the user id itself. */
const tokenOf = accessTokenOf;

/** A SignalR hub at /hub on a fresh HTTP server; `options` override the defaults. */
export async function serve(options: Partial<SignalRBindingOptions<WebSocket>> = {}) {
  const http = createServer();
  const wss = new WebSocketServer({ noServer: true });
  const errors: unknown[] = [];
  const hub = bindSignalR(wss, {
    store: new InMemoryMembershipStore(),
    path: "/hub",
    userIdOf: tokenOf,
    methods: {},
    onConnection: (connection, groups) =>
      hub.send(connection.id, "welcome", { connectionId: connection.id, groups }),
    onError: (error) => errors.push(error),
    ...options,
  });
  http.on("request", (request, response) => void hub.handleRequest(request, response));
  http.on("upgrade", (request, socket, head) => void hub.handleUpgrade(request, socket, head));
  http.listen(0, "127.0.0.1");
  await once(http, "listening");
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/hub`;
  return {
    hub,
    url,
    errors,
    async close() {
      for (const client of wss.clients) client.terminate();
      await hub.close();
      http.closeAllConnections();
      http.close();
    },
  };
}

/**
 * The hubs and official clients of a describe block, all closed after each test: `start` serves
 * one (as {@link serve}), `track` registers a client to stop.
 */
export function useHubs() {
  const servers: Array<{ close(): Promise<void> }> = [];
  const clients: HubConnection[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.stop()));
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });
  return {
    async start(options: Parameters<typeof serve>[0] = {}) {
      const server = await serve(options);
      servers.push(server);
      return server;
    },
    track<C extends { connection: HubConnection }>(client: C): C {
      clients.push(client.connection);
      return client;
    },
  };
}
