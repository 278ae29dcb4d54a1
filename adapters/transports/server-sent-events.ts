import type { ServerResponse } from "node:http";
import { HttpSocket, writable } from "./http-socket.js";

const LINE_BREAK = /\r\n|\r|\n/;

/**
 * Server-Sent Events (TransportProtocols.md): one response kept open, each message an unnamed
 * event whose `data` lines are the message's lines (text only: a line break may come back as
 * `\n`). The connection ends when the client drops the response.
 */
export class ServerSentEventsSocket extends HttpSocket {
  readonly #response: ServerResponse;
  #corked = false;

  constructor(response: ServerResponse) {
    super();
    this.#response = response;
    response.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      // Proxies that buffer responses (nginx) would hold the events back.
      "x-accel-buffering": "no",
    });
    // A comment first: some browsers fire `open` only once a byte has come.
    response.write(":\r\n");
    response.on("close", () => this.terminate());
    // Its client went while it was being authenticated: the close event has been and gone.
    if (!writable(response)) setImmediate(() => this.terminate());
  }

  get bufferedAmount(): number {
    return this.#response.writableLength;
  }

  send(data: Buffer | string): void {
    if (this.readyState !== 1 || !writable(this.#response)) return;
    const text = typeof data === "string" ? data : data.toString();
    const lines = LINE_BREAK.test(text) ? text.split(LINE_BREAK) : [text];
    // One write per turn, however many events the turn sends.
    if (!this.#corked) {
      this.#corked = true;
      this.#response.cork();
      process.nextTick(() => {
        this.#corked = false;
        this.#response.uncork();
      });
    }
    this.#response.write(`data: ${lines.join("\r\ndata: ")}\r\n\r\n`);
  }

  protected ended(graceful: boolean): void {
    if (graceful) this.#response.end();
    else this.#response.destroy();
  }
}
