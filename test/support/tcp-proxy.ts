import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";

/** A TCP proxy in front of a port, to cut connections and hold new ones as a network drop does. */
export interface TcpProxy {
  readonly port: number;
  /** Ends every connection through it at once, without a WebSocket close: both sides see 1006. */
  cut(): void;
  /** For `ms`, new connections wait (the network is down), then go through. */
  hold(ms: number): void;
  close(): Promise<void>;
}

export async function tcpProxy(targetPort: number): Promise<TcpProxy> {
  const pairs = new Set<[Socket, Socket]>();
  let heldUntil = 0;
  const pipe = (client: Socket) => {
    const upstream = connect(targetPort, "127.0.0.1");
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  };
  const server = createServer({ pauseOnConnect: true }, (client) => {
    const wait = heldUntil - Date.now();
    if (wait > 0) setTimeout(() => (client.destroyed ? undefined : pipe(client)), wait);
    else pipe(client);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  const cut = () => {
    for (const [client, upstream] of pairs) {
      client.destroy();
      upstream.destroy();
    }
    pairs.clear();
  };
  return {
    port: address.port,
    cut,
    hold(ms) {
      heldUntil = Date.now() + ms;
    },
    async close() {
      cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
