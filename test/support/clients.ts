/** Clients of the sample's protocols. No vitest here: the benchmarks use them too. */
import {
  HttpTransportType,
  type HubConnection,
  HubConnectionBuilder,
  HubConnectionState,
  JsonHubProtocol,
  LogLevel,
} from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import WebSocket from "ws";

export type ServerMessage = { type: string; [key: string]: unknown };

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Matches the `removed` message of `group`. */
export const isRemoved = (group: string) => (m: ServerMessage) =>
  m.type === "removed" && m.group === group;

/** Records what a client receives and waits for it. */
export abstract class Recorder {
  readonly messages: ServerMessage[] = [];
  #waiters: Array<() => void> = [];

  protected abstract get isClosed(): boolean;

  protected record(message: ServerMessage): void {
    this.messages.push(message);
    for (const wake of this.#waiters.splice(0)) wake();
  }

  get welcome(): ServerMessage {
    return this.messages.find((m) => m.type === "welcome") as ServerMessage;
  }

  /** Waits for the first message (received so far or later) that `matches`. */
  async next(matches: (m: ServerMessage) => boolean, timeout = 10_000): Promise<ServerMessage> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.messages.find(matches);
      if (found) return found;
      if (this.isClosed) throw new Error("socket closed while waiting");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; received: ${JSON.stringify(this.messages)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  abstract close(): void;
}

/** A real WebSocket client that records every frame it receives. */
export class Client extends Recorder {
  readonly ws: WebSocket;
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(ws: WebSocket) {
    super();
    this.ws = ws;
    this.closed = new Promise((resolve) =>
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })),
    );
    ws.on("message", (data, isBinary) => {
      // The protocol is JSON in text frames: a binary frame is a bug, recorded so tests fail.
      this.record(
        isBinary ? { type: "BINARY FRAME" } : (JSON.parse(data.toString()) as ServerMessage),
      );
    });
  }

  protected get isClosed(): boolean {
    return this.ws.readyState === WebSocket.CLOSED;
  }

  /**
   * Connects with the token in the Authorization header (or the query string) and waits for
   * `welcome`. `resume`: what to present as `?resume=` (see {@link resumeFrom}).
   */
  static async connect(
    wsUrl: string,
    bearer: string,
    via: "header" | "query" = "header",
    resume?: string,
  ): Promise<Client> {
    const url = new URL(wsUrl);
    if (via === "query") url.searchParams.set("access_token", bearer);
    if (resume !== undefined) url.searchParams.set("resume", resume);
    const ws =
      via === "header"
        ? new WebSocket(url, { headers: { authorization: `Bearer ${bearer}` } })
        : new WebSocket(url);
    const client = new Client(ws);
    await client.next((m) => m.type === "welcome");
    return client;
  }

  send(message: unknown): void {
    this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  close(): void {
    this.ws.close();
  }
}

/**
 * What a client of the sample's ws protocol presents when it reconnects, from what it received:
 * `since` from its last `resumed`, and its position in each group (see the README).
 */
export function resumeFrom(client: Recorder): string {
  let since: unknown;
  const positions: Record<string, unknown> = {};
  for (const m of client.messages) {
    if (m.type === "resumed") {
      since = m.since;
      for (const g of m.groups as Array<{ group: string; position: string }>)
        positions[g.group] = g.position;
    } else if (m.type === "message" && typeof m.group === "string") positions[m.group] = m.position;
  }
  return JSON.stringify({ since, positions });
}

/** The HTTP status a WebSocket upgrade is refused with, or "open" if it is accepted. */
export async function upgradeStatus(
  url: string,
  headers: Record<string, string> = {},
): Promise<number | "open"> {
  const answer = await upgradeAnswer(url, headers);
  return answer === "open" ? answer : answer.status;
}

/** The HTTP answer (status and headers) a WebSocket upgrade is refused with, or "open". */
export function upgradeAnswer(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined> } | "open"> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.once("unexpected-response", (_req, res) => {
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
      ws.terminate();
    });
    ws.once("open", () => {
      resolve("open");
      ws.close();
    });
    ws.once("error", (e) => reject(e));
  });
}

/** A client of the sample's SignalR endpoint on the official `@microsoft/signalr` client. */
export class SignalRClient extends Recorder {
  readonly connection: HubConnection;
  /** Resolves with the error the connection closed with (undefined for a clean stop). */
  readonly closed: Promise<Error | undefined>;

  private constructor(connection: HubConnection) {
    super();
    this.connection = connection;
    this.closed = new Promise((resolve) => connection.onclose(resolve));
    for (const type of ["welcome", "message", "joined", "removed", "resumed", "presence"])
      connection.on(type, (payload: object) => this.record({ type, ...payload }));
  }

  protected get isClosed(): boolean {
    return this.connection.state === HubConnectionState.Disconnected;
  }

  /**
   * Connects to `<url>/signalr` with the token from `accessTokenFactory` and waits for `welcome`.
   * `reconnectDelays` turns on `withAutomaticReconnect` with them; with `resume`, each reconnect
   * presents what the client received (see {@link resumeFrom}), as the sample's page does.
   */
  static async connect(
    url: string,
    bearer: string | (() => string),
    options: {
      reconnectDelays?: number[];
      skipNegotiation?: boolean;
      resume?: boolean;
      stateful?: boolean;
      /** The only transport it may use (default: the client's choice, WebSockets first). */
      transport?: "WebSockets" | "ServerSentEvents" | "LongPolling";
      protocol?: "json" | "messagepack";
    } = {},
  ): Promise<SignalRClient> {
    let builder = new HubConnectionBuilder()
      .withUrl(`${url}/signalr`, {
        accessTokenFactory: typeof bearer === "string" ? () => bearer : bearer,
        ...(options.transport && { transport: HttpTransportType[options.transport] }),
        ...(options.skipNegotiation && {
          skipNegotiation: true,
          transport: HttpTransportType.WebSockets,
        }),
      })
      .withHubProtocol(
        options.protocol === "messagepack" ? new MessagePackHubProtocol() : new JsonHubProtocol(),
      )
      .configureLogging(LogLevel.None);
    if (options.reconnectDelays) builder = builder.withAutomaticReconnect(options.reconnectDelays);
    if (options.stateful) builder = builder.withStatefulReconnect();
    const client = new SignalRClient(builder.build());
    if (options.resume)
      client.connection.onreconnecting(() => {
        const resumed = new URL(`${url}/signalr`);
        resumed.searchParams.set("resume", resumeFrom(client));
        client.connection.baseUrl = resumed.href;
      });
    await client.connection.start();
    await client.next((m) => m.type === "welcome");
    return client;
  }

  /** Invokes a hub method; resolves to its result or the error message it failed with. */
  invoke(method: string, ...args: unknown[]): Promise<unknown> {
    return this.connection
      .invoke(method, ...args)
      .catch((error: unknown) => ({ error: error instanceof Error ? error.message : error }));
  }

  /** Streams a hub method to its end: its items, or the error message it failed with. */
  stream(
    method: string,
    ...args: unknown[]
  ): Promise<Array<Record<string, unknown>> | { error: string }> {
    return new Promise((resolve) => {
      const items: Array<Record<string, unknown>> = [];
      this.connection.stream(method, ...args).subscribe({
        next: (item: Record<string, unknown>) => items.push(item),
        complete: () => resolve(items),
        error: (error: unknown) =>
          resolve({ error: error instanceof Error ? error.message : String(error) }),
      });
    });
  }

  /** Cuts its WebSocket without a close handshake, as a network drop does. */
  drop(): void {
    const http = (this.connection as unknown as { connection: { transport?: unknown } }).connection;
    const transport = http.transport as { _webSocket?: { terminate(): void } } | undefined;
    if (transport?._webSocket === undefined) throw new Error("no WebSocket to drop");
    transport._webSocket.terminate();
  }

  close(): void {
    void this.connection.stop();
  }
}
