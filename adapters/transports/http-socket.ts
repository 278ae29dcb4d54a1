import { EventEmitter } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { respond } from "../hubs/http.js";

const OPEN = 1;
const CLOSED = 3;

/**
 * A connection carried by HTTP requests instead of a WebSocket: what the server sends goes out
 * through a transport's responses (Server-Sent Events, long polling), what the client sends comes
 * in as POSTs. It is the socket a hub binding holds: `send`, `close`, `terminate`, `readyState`,
 * `bufferedAmount`, `pause`/`resume`, and `message` and `close` events, as a `ws` WebSocket has.
 */
export abstract class HttpSocket extends EventEmitter {
  #state = OPEN;
  #posting: IncomingMessage | undefined;
  #paused = false;

  get readyState(): number {
    return this.#state;
  }

  /** Bytes sent and not yet handed to the client's connection. */
  abstract get bufferedAmount(): number;

  /** Queues `data` for the client, one message of the transport. */
  abstract send(data: Buffer | string, options: { binary: boolean }): void;

  /** Ends the connection; what was sent before still reaches the client where it can. */
  close(): void {
    this.#finish(true);
  }

  /** Ends the connection at once: what was not delivered is dropped. */
  terminate(): void {
    this.#finish(false);
  }

  /** Stops reading the client's POST (the hub's queue is full): the POST waits for its answer. */
  pause(): void {
    this.#paused = true;
    this.#posting?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#posting?.resume();
  }

  /**
   * A POST of the client's messages: every chunk of its body is a `message`, and it is answered
   * 200 once the whole body is read (reading waits while the socket is paused). Another POST
   * while one is read is answered 409 and the connection stays, as the transport spec says.
   */
  post(request: IncomingMessage, response: ServerResponse, binary: boolean): void {
    if (this.#state !== OPEN || this.#posting !== undefined) {
      request.resume();
      respond(
        response,
        this.#state !== OPEN ? 404 : 409,
        this.#state !== OPEN ? "Not Found" : "Conflict",
      );
      return;
    }
    this.#posting = request;
    if (this.#paused) request.pause();
    const done = () => {
      if (this.#posting === request) this.#posting = undefined;
    };
    request.on("data", (chunk: Buffer) => {
      if (this.#state === OPEN) this.emit("message", chunk, binary);
    });
    // Read while open, so received: 200 even if the connection ended meanwhile (its messages
    // may be what ended it: a refused handshake, a close message).
    request.on("end", () => {
      done();
      respond(response, 200);
    });
    request.on("error", done);
    request.on("close", done);
  }

  /** Called once, when the connection ends: `graceful` when what was sent should go out. */
  protected abstract ended(graceful: boolean): void;

  #finish(graceful: boolean): void {
    if (this.#state !== OPEN) return;
    this.#state = CLOSED;
    this.#posting?.resume();
    this.ended(graceful);
    // As ws does: the close event comes after the call that closed it has returned.
    setImmediate(() => this.emit("close", graceful ? 1000 : 1006));
  }
}

/** An HTTP response that can still be written to: its client has not gone. */
export function writable(response: ServerResponse): boolean {
  return !response.writableEnded && !response.destroyed && response.socket?.destroyed !== true;
}
