import type { ServerResponse } from "node:http";
import { HttpSocket, writable } from "./http-socket.js";

export interface LongPollingOptions {
  /** A poll with nothing to deliver is answered empty after this long. Default 90 s (ASP.NET Core's). */
  pollTimeoutMs?: number;
  /** A connection with no poll waiting for this long is gone. Default 15 s (ASP.NET Core's). */
  disconnectTimeoutMs?: number;
}

/**
 * Long polling (TransportProtocols.md): the client keeps one GET waiting, answered with every
 * message queued since its last one, together, as soon as there is one (or empty after
 * `pollTimeoutMs`); a newer poll replaces the waiting one, which is answered 204. Once closed,
 * what is still queued goes to the next poll, and later polls are answered 204.
 */
export class LongPollingSocket extends HttpSocket {
  /** Whether the messages are binary (MessagePack), for the answers' content type. */
  #binary = false;
  readonly #pollTimeoutMs: number;
  readonly #disconnectTimeoutMs: number;
  #queue: Buffer[] = [];
  #queued = 0;
  #poll: { response: ServerResponse; timer: NodeJS.Timeout } | undefined;
  #flushing = false;
  #idle: NodeJS.Timeout | undefined;

  constructor(options: LongPollingOptions = {}) {
    super();
    this.#pollTimeoutMs = options.pollTimeoutMs ?? 90_000;
    this.#disconnectTimeoutMs = options.disconnectTimeoutMs ?? 15_000;
    this.#waitForPoll();
  }

  get bufferedAmount(): number {
    return this.#queued;
  }

  send(data: Buffer | string, options: { binary: boolean }): void {
    if (this.readyState !== 1) return;
    this.#binary = options.binary;
    const buffer = typeof data === "string" ? Buffer.from(data) : data;
    this.#queue.push(buffer);
    this.#queued += buffer.length;
    // What is sent in one turn goes out in one answer: fewer requests per message in a burst.
    if (this.#poll !== undefined && !this.#flushing) {
      this.#flushing = true;
      setImmediate(() => {
        this.#flushing = false;
        this.#answer();
      });
    }
  }

  /** A poll: answered at once if anything is queued (or the connection is over), else held. */
  poll(response: ServerResponse): void {
    // Its client went while it was being authenticated: as if it never came.
    if (!writable(response)) return;
    this.#replace(undefined);
    if (this.readyState !== 1) {
      if (this.#queued > 0) this.#deliver(response);
      else end(response, 204);
      return;
    }
    clearTimeout(this.#idle);
    const timer = setTimeout(() => this.#answer(), this.#pollTimeoutMs);
    timer.unref();
    const poll = { response, timer };
    this.#poll = poll;
    response.on("close", () => {
      // The client (or a proxy) gave up on it: the connection waits for its next poll.
      if (this.#poll !== poll) return;
      clearTimeout(timer);
      this.#poll = undefined;
      this.#waitForPoll();
    });
    if (this.#queued > 0) this.#answer();
  }

  protected ended(graceful: boolean): void {
    clearTimeout(this.#idle);
    if (!graceful) {
      this.#queue = [];
      this.#queued = 0;
    }
    // The waiting poll gets what is left; the poll after it learns the connection is over.
    if (this.#queued > 0) this.#answer();
    else this.#replace(204);
  }

  /** Answers the waiting poll with what is queued (empty on its timeout). */
  #answer(): void {
    const poll = this.#poll;
    if (poll === undefined) return;
    this.#poll = undefined;
    clearTimeout(poll.timer);
    if (this.readyState === 1) this.#waitForPoll();
    this.#deliver(poll.response);
  }

  #deliver(response: ServerResponse): void {
    // A client that has gone loses nothing: the queue waits for its next poll.
    if (!writable(response)) return;
    const body = this.#queue.length === 1 ? (this.#queue[0] as Buffer) : Buffer.concat(this.#queue);
    this.#queue = [];
    this.#queued = 0;
    response.writeHead(200, {
      "content-type": this.#binary ? "application/octet-stream" : "text/plain; charset=utf-8",
      "content-length": body.length,
      "cache-control": "no-store",
    });
    response.end(body);
  }

  /** Ends the waiting poll, if any, with `status` (a newer poll replaced it: 204). */
  #replace(status: number | undefined): void {
    const poll = this.#poll;
    if (poll === undefined) return;
    this.#poll = undefined;
    clearTimeout(poll.timer);
    end(poll.response, status ?? 204);
  }

  #waitForPoll(): void {
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => this.terminate(), this.#disconnectTimeoutMs);
    this.#idle.unref();
  }
}

function end(response: ServerResponse, status: number): void {
  if (!writable(response)) return;
  response.writeHead(status, { "content-length": 0, "cache-control": "no-store" });
  response.end();
}
