/**
 * Broadcast: the library's fan-out alone, without the sample around it. 1,000 connections in one
 * group, 100-byte messages, 1, 20 and 200 broadcasts per turn of the event loop: the server's CPU
 * per delivery through WsGroups, Socket.IO's bare `io.to(room).emit`, a naive `ws.send` loop, and
 * two lower bounds (bench/broadcast-server.ts), in interleaved rounds, every delivery and its
 * order checked by a client process. Also the idle heap per connection of WsGroups against a
 * plain map of sets.
 */
import { type ChildProcess, execFile, fork } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Command, Mode } from "./broadcast-server.js";
import { type Benchmark, median, type Row, round } from "./lib.js";

const execute = promisify(execFile);
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CONNECTIONS = 1_000;
const LABEL: Record<Mode, string> = {
  wsgroups: "WsGroups.broadcast",
  history: "with the message history on (in-process)",
  "socket.io": "Socket.IO 4.8 io.to(room).emit",
  naive: "naive ws.send loop",
  d1: "lower bound d1: frame once, one write per client",
  d2: "lower bound d2: one write per socket per turn",
};

/** A child over IPC: `ask` sends a command and resolves with the first reply `accept` takes. */
function child(script: string, execArgv: string[] = []) {
  const process = fork(script, [], { cwd: ROOT, execArgv: ["--import", "tsx", ...execArgv] });
  const next = <T>(accept: (m: Record<string, unknown>) => T | undefined) =>
    new Promise<T>((resolve, reject) => {
      const onMessage = (m: Record<string, unknown>) => {
        const value = accept(m);
        if (value === undefined) return;
        process.off("message", onMessage);
        process.off("exit", onExit);
        resolve(value);
      };
      const onExit = (code: number) => reject(new Error(`${script} exited with ${code}`));
      process.on("message", onMessage);
      process.once("exit", onExit);
    });
  return { process, next, tell: (m: object) => process.send(m) };
}

/** Bytes of heap per connection of `kind` (bench/group-memory.ts). */
async function heapPerConnection(kind: "wsgroups" | "plain"): Promise<number> {
  const { stdout } = await execute(
    process.execPath,
    ["--expose-gc", "--import", "tsx", "bench/group-memory.ts", kind, "5000", "10", "500"],
    { cwd: ROOT },
  );
  return Number(stdout.trim());
}

const stop = async (p: ChildProcess) => {
  if (p.exitCode !== null) return;
  p.kill();
  await once(p, "exit");
};

const broadcast: Benchmark = async (ctx) => {
  const messages = ctx.quick ? 200 : 1_000;
  const rounds = ctx.quick ? 1 : 3;
  const server = child("bench/broadcast-server.ts", ["--expose-gc"]);
  const client = child("bench/broadcast-client.ts");
  try {
    const ports = await server.next((m) => ("wsPort" in m ? m : undefined));
    await client.next((m) => m.ready);
    client.tell({ connect: { ...ports, connections: CONNECTIONS } });
    await client.next((m) => m.connected);

    const run = async (mode: Mode, perTurn: number) => {
      client.tell({ start: { hub: mode === "socket.io" ? "socket.io" : "ws", messages } });
      await client.next((m) => m.started);
      const done = server.next((m) => m.done as { user: number; system: number } | undefined);
      const windows = (async () => {
        for (;;) {
          const sent = await Promise.race([
            server.next((m) => m.window as number | undefined),
            done.then(() => undefined),
          ]);
          if (sent === undefined) return;
          client.tell({ await: sent * CONNECTIONS });
          await client.next((m) => m.reached);
          server.tell({ next: true } satisfies Command);
        }
      })();
      server.tell({ run: mode, perTurn, messages, window: 200 } satisfies Command);
      const cpu = await done;
      await windows;
      client.tell({ check: true });
      const { errors, short } = await client.next(
        (m) => m.checked as { errors: number; short: number } | undefined,
      );
      if (errors > 0 || short > 0)
        throw new Error(`${mode} at ${perTurn}/turn: ${errors} out of order, ${short} short`);
      const deliveries = messages * CONNECTIONS;
      return {
        micros: (cpu.user + cpu.system) / deliveries,
        kernel: cpu.system / (cpu.user + cpu.system),
      };
    };

    const cases: [number, Mode[]][] = [
      [1, ["wsgroups", "history", "socket.io", "naive", "d1"]],
      [20, ["wsgroups", "history", "socket.io", "naive", "d1", "d2"]],
      [200, ["wsgroups", "history", "socket.io", "naive", "d1", "d2"]],
    ];
    const samples = new Map<string, { micros: number; kernel: number }[]>();
    for (let r = 0; r < rounds; r++) {
      for (const [perTurn, modes] of cases) {
        // Interleaved, and in a different order each round.
        for (const mode of modes.map((_, i) => modes[(i + r) % modes.length] as Mode)) {
          const key = `${mode}@${perTurn}`;
          samples.set(key, [...(samples.get(key) ?? []), await run(mode, perTurn)]);
        }
      }
    }
    const at = (mode: Mode, perTurn: number) => {
      const list = samples.get(`${mode}@${perTurn}`) ?? [];
      return {
        micros: median(list.map((s) => s.micros)),
        kernel: median(list.map((s) => s.kernel)),
      };
    };

    const rows: Row[] = [];
    for (const [perTurn, modes] of cases) {
      const bound: Mode = perTurn === 1 ? "d1" : "d2";
      const lower = at(bound, perTurn).micros;
      const ours = at("wsgroups", perTurn);
      for (const mode of modes) {
        const { micros, kernel } = at(mode, perTurn);
        const row: Row = {
          benchmark: "broadcast",
          case: `${perTurn}/turn, ${CONNECTIONS.toLocaleString("en")} connections: ${LABEL[mode]} (kernel ${Math.round(kernel * 100)}%)`,
          value: round(micros, 3),
          unit: "µs/delivery",
          details: { samples: samples.get(`${mode}@${perTurn}`) },
        };
        if (mode === "wsgroups") {
          const factor = perTurn === 1 ? 1 : 2;
          Object.assign(row, {
            baseline: { label: bound, value: round(lower, 3) },
            ratio: round(lower / micros),
            target: `≤ ${factor}× ${bound}`,
            met: ctx.quick ? undefined : micros <= factor * lower,
          });
        } else if (mode === "history") {
          // The cost of keeping every message for replays, against the same broadcast without.
          Object.assign(row, {
            baseline: { label: "history off", value: round(ours.micros, 3) },
            ratio: round(ours.micros / micros),
            target: "≤ 1.1× history off",
            met: ctx.quick ? undefined : micros <= 1.1 * ours.micros,
          });
        } else if (mode === "socket.io" || mode === "naive") {
          Object.assign(row, {
            baseline: { label: "WsGroups", value: round(ours.micros, 3) },
            ratio: round(ours.micros / micros),
          });
        }
        rows.push(row);
      }
    }

    // Each structure in fresh processes, alternately; the median of 3.
    const heap: Record<"wsgroups" | "plain", number[]> = { wsgroups: [], plain: [] };
    for (let r = 0; r < 3; r++)
      for (const kind of ["wsgroups", "plain"] as const)
        heap[kind].push(await heapPerConnection(kind));
    const memory = { wsGroups: median(heap.wsgroups), plain: median(heap.plain) };
    rows.push({
      benchmark: "broadcast",
      case: "idle heap per connection, 5,000 connections in 10 groups each: WsGroups",
      value: round(memory.wsGroups / 1024, 2),
      unit: "KiB",
      baseline: { label: "plain map of sets", value: round(memory.plain / 1024, 2) },
      ratio: round(memory.plain / memory.wsGroups),
      target: "≤ 1.2× plain",
      met: memory.wsGroups <= 1.2 * memory.plain,
    });
    return rows;
  } finally {
    server.tell({ exit: true });
    await Promise.all([stop(server.process), stop(client.process)]);
  }
};

export default broadcast;
