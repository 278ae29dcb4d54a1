import { io, type Socket } from "socket.io-client";
import { afterEach } from "vitest";
import { Recorder, type ServerMessage } from "./sample.js";

const EVENTS = ["welcome", "joined", "removed", "message", "recovered", "presence"];

/** A real socket.io-client (websocket transport) recording the sample's events as `{ type, ...payload }`. */
export class IoClient extends Recorder {
  readonly socket: Socket;

  private constructor(socket: Socket) {
    super();
    this.socket = socket;
    socket.onAny((event: string, payload: object) => {
      if (EVENTS.includes(event)) this.record({ type: event, ...payload });
    });
  }

  protected get isClosed(): boolean {
    return !this.socket.connected && !this.socket.active;
  }

  /** A client, not yet connected: events emitted now are sent once it is. */
  static open(url: string, bearer: string, via: "header" | "query" = "header"): IoClient {
    return new IoClient(
      io(url, {
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
        ...(via === "header"
          ? { extraHeaders: { authorization: `Bearer ${bearer}` } }
          : { query: { access_token: bearer } }),
      }),
    );
  }

  /** Connects and waits for `welcome`; rejects with the server's reason if it refuses. */
  static async connect(url: string, bearer: string, via?: "header" | "query"): Promise<IoClient> {
    const client = IoClient.open(url, bearer, via);
    const refused = new Promise<never>((_, reject) =>
      client.socket.once("connect_error", (e) => reject(e)),
    );
    await Promise.race([client.next((m) => m.type === "welcome"), refused]);
    return client;
  }

  /** Emits an event and resolves to the server's acknowledgement. */
  request(event: "send" | "join" | "leave" | "online", payload: unknown): Promise<ServerMessage> {
    return this.socket.timeout(10_000).emitWithAck(event, payload);
  }

  close(): void {
    this.socket.disconnect();
  }
}

/** A `connect` for one test file whose clients are all closed after each test. */
export function useIoClients() {
  const clients: IoClient[] = [];
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });
  return async (...args: Parameters<typeof IoClient.connect>): Promise<IoClient> => {
    const client = await IoClient.connect(...args);
    clients.push(client);
    return client;
  };
}
