/**
 * `npm start`: the chat sample. Starts Azurite (table service, data in azurite-data/) unless
 * AZURE_TABLES_CONNECTION_STRING is set, then the hub server. Ctrl-C stops both.
 */
import { type Azurite, startAzurite } from "../adapters/testing/azurite.js";
import { ConfigError, loadConfig } from "./config.js";
import { startHubServer } from "./server.js";
import { startSocketIoServer } from "./socket-io-server.js";

async function main() {
  let config = loadConfig();
  let azurite: Azurite | undefined;
  if (config.connectionString === undefined) {
    azurite = await startAzurite({
      port: config.azuritePort,
      location: config.azuriteLocation,
    }).catch((error: unknown) => {
      throw new Error(
        `could not start Azurite on 127.0.0.1:${config.azuritePort} (is another one running? ` +
          `set AZURITE_PORT, or AZURE_TABLES_CONNECTION_STRING to use yours): ${String(error)}`,
      );
    });
    console.log(
      `Azurite table service on 127.0.0.1:${azurite.port}, data in ${config.azuriteLocation}`,
    );
    // The port Azurite really got (AZURITE_PORT=0 picks a free one).
    config = { ...config, connectionString: azurite.connectionString };
  }
  const start = config.hub === "socket.io" ? startSocketIoServer : startHubServer;
  const server = await start(config).catch(async (error: unknown) => {
    await azurite?.stop();
    throw error;
  });
  const endpoint =
    config.hub === "socket.io"
      ? `Socket.IO, websocket transport${config.redisUrl ? ", Redis adapter" : ""}`
      : `WebSocket: ${server.url.replace("http", "ws")}/hub, SignalR: ${server.url}/signalr`;
  console.log(`hub-membership sample listening on ${server.url} (${endpoint})`);
  if (config.devSignIn) console.log("dev sign-in is on: GET /token?user=<name> mints a token");

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: stopping`);
    await server.close();
    await azurite?.stop();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
}

main().catch((error: unknown) => {
  console.error(error instanceof ConfigError ? `configuration error: ${error.message}` : error);
  process.exit(1);
});
