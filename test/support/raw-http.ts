import { connect } from "node:net";

/** What a server answered to raw bytes: its status line and body, or how the socket ended. */
export interface RawAnswer {
  /** `HTTP/1.1 400 Bad Request`, say; `undefined` if the server closed without a response. */
  readonly status: string | undefined;
  readonly body: string;
  /** Whether the server closed (or reset) the connection within the time given. */
  readonly closed: boolean;
}

/**
 * Sends `request` as it is (nothing normalizes it) to 127.0.0.1:`port` and collects the answer
 * until the server closes the socket or `ms` pass. Never rejects.
 */
export function rawRequest(port: number, request: string | Buffer, ms = 3_000): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    const finish = (closed: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString("latin1");
      const head = text.indexOf("\r\n\r\n");
      resolve({
        status: text.startsWith("HTTP/") ? text.slice(0, text.indexOf("\r\n")) : undefined,
        body: head < 0 ? "" : text.slice(head + 4),
        closed,
      });
    };
    const timer = setTimeout(() => finish(false), ms);
    socket.on("data", (chunk) => chunks.push(chunk));
    socket.on("error", () => finish(true));
    socket.on("close", () => finish(true));
    socket.write(request);
  });
}

/** An HTTP/1.1 request with `Connection: close`, from a request line and headers. */
export function httpRequest(line: string, headers: Record<string, string> = {}, body = ""): string {
  const lines = Object.entries({ host: "localhost", connection: "close", ...headers }).map(
    ([name, value]) => `${name}: ${value}`,
  );
  return `${line}\r\n${lines.join("\r\n")}\r\n\r\n${body}`;
}

/** The headers of a WebSocket upgrade (RFC 6455), to add to a request line. */
export const WEBSOCKET_HEADERS = {
  connection: "Upgrade",
  upgrade: "websocket",
  "sec-websocket-version": "13",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
} as const;
