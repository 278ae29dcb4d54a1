import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";

const ORIGIN = "http://localhost";

/**
 * A request's target as a URL, or `undefined` when it is not one a server should act on (answer
 * 400). Origin-form targets (`/path?query`) are read as paths, so `//host/x` is the path
 * `//host/x`; absolute-form ones (`http://host/path`, from proxies) as given. A target that the
 * common `new URL(request.url, base)` would throw on is refused too, so code of yours that parses
 * it after the binding accepted the request cannot throw.
 */
export function requestTarget(request: IncomingMessage): URL | undefined {
  const target = request.url;
  if (target === undefined || URL.parse(target, ORIGIN) === null) return undefined;
  if (target.startsWith("/")) return URL.parse(`${ORIGIN}${target}`) ?? undefined;
  const url = URL.parse(target);
  return url?.protocol === "http:" || url?.protocol === "https:" ? url : undefined;
}

/** Answers an upgrade request with an HTTP error and closes its socket: no WebSocket follows. */
export function refuseUpgrade(
  socket: Duplex,
  status: number,
  reason: string,
  headers: Readonly<Record<string, string>> = {},
): void {
  const extra = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  // Once the answer is out, the socket goes: `end` alone waits for the client to end its side,
  // which a client still sending a body never does.
  socket.once("finish", () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `${extra.join("")}Content-Length: ${Buffer.byteLength(reason)}\r\n\r\n${reason}`,
  );
}

/** Answers a request with `body` (JSON for an object, text for a string, nothing for none). */
export function respond(
  response: ServerResponse,
  status: number,
  body?: object | string,
  headers: Readonly<Record<string, string>> = {},
): void {
  if (response.headersSent) {
    response.end();
    return;
  }
  const text = body === undefined || typeof body === "string" ? body : JSON.stringify(body);
  response.writeHead(status, {
    ...headers,
    "content-type": typeof body === "string" ? "text/plain" : "application/json",
    "content-length": Buffer.byteLength(text ?? ""),
    "cache-control": "no-store",
  });
  response.end(text);
}
