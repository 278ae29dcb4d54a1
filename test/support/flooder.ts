/**
 * A flooder for the flood scenario (flood.ts), in a process of its own:
 * `tsx test/support/flooder.ts JSON` with `{ wsUrls, tokens, group, ms }`. Each token's connection
 * sends to `group` as fast as its socket takes frames, comes straight back whenever the server
 * closes it (to the next server of `wsUrls`), and stops after `ms`. Prints one JSON line: frames
 * sent, `rate_limited` answers, closes, and refused reconnections.
 */
import { WebSocket } from "ws";

const { wsUrls, tokens, group, ms } = JSON.parse(process.argv[2] ?? "{}") as {
  wsUrls: string[];
  tokens: string[];
  group: string;
  ms: number;
};
const report = { sent: 0, rateLimited: 0, closed: 0, refused: 0 };
const until = Date.now() + ms;
const frame = (i: number) => JSON.stringify({ type: "send", group, text: `flood ${i}` });

function flood(token: string, attempt: number): Promise<void> {
  return new Promise((resolve) => {
    if (Date.now() >= until) return resolve();
    const url = wsUrls[attempt % wsUrls.length] as string;
    const ws = new WebSocket(url, {
      headers: { authorization: `Bearer ${token}` },
      // A server that never answers must not keep this process (and the test) waiting.
      handshakeTimeout: 5_000,
    });
    let timer: NodeJS.Timeout | undefined;
    const pump = () => {
      if (Date.now() >= until) return ws.close();
      // As fast as the connection takes frames, in slices, so this process still reads answers.
      for (
        let i = 0;
        i < 200 && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 65_536;
        i++
      )
        ws.send(frame(report.sent++));
      timer = setTimeout(pump, ws.bufferedAmount < 65_536 ? 0 : 1);
    };
    // The server's close handshake may not come while its reading is paused: end it ourselves.
    const stop = setTimeout(() => ws.terminate(), until - Date.now() + 2_000);
    let welcomed = false;
    ws.on("message", (data) => {
      const message = JSON.parse(data.toString()) as { type?: string; code?: string };
      if (message.type === "welcome") {
        welcomed = true;
        pump();
      }
      if (message.code === "rate_limited") report.rateLimited++;
    });
    ws.on("unexpected-response", () => {
      report.refused++; // over the connection cap, say: the close below tries again
      ws.terminate();
    });
    // Every connection ends here once; an attacker comes straight back.
    ws.on("close", () => {
      clearTimeout(timer);
      clearTimeout(stop);
      if (Date.now() >= until) return resolve();
      if (welcomed) report.closed++;
      setTimeout(() => flood(token, attempt + 1).then(resolve), welcomed ? 10 : 50);
    });
    ws.on("error", () => {});
  });
}

await Promise.all(tokens.map((token, i) => flood(token, i)));
console.log(JSON.stringify(report));
