/**
 * Summarizes a V8 CPU profile (.cpuprofile, from BENCH_PROFILE=1): the functions that took the
 * most self time, with their share of the busy (not idle) time; `--last S` only the last S seconds of the profile (a phase at
 * the end of a run). `node --import tsx bench/profile-summary.ts FILE [TOP] [--last S]`
 */
import { readFileSync } from "node:fs";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const args = process.argv.slice(2);
const lastAt = args.indexOf("--last");
const lastSeconds = lastAt >= 0 ? Number(args.splice(lastAt, 2)[1]) : Number.POSITIVE_INFINITY;
const [file, top = "25"] = args;
if (file === undefined) {
  console.error("usage: bench/profile-summary.ts FILE.cpuprofile [TOP]");
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const times: number[] = [];
let t = 0;
for (const delta of profile.timeDeltas) {
  t += delta;
  times.push(t);
}
const from = t - lastSeconds * 1e6;
const self = new Map<string, number>();
let total = 0;
profile.samples.forEach((id, i) => {
  const node = byId.get(id);
  if ((times[i] ?? 0) < from || node === undefined || node.callFrame.functionName === "(idle)")
    return;
  total++;
  const { functionName, url, lineNumber } = node.callFrame;
  const where = url.replace(/^.*node_modules\//, "").replace(/^file:\/\/.*\/hub-membership\//, "");
  const key = `${functionName || "(anonymous)"} ${where ? `${where}:${lineNumber + 1}` : ""}`;
  self.set(key, (self.get(key) ?? 0) + 1);
});
for (const [key, count] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(top))) {
  console.log(`${((count / total) * 100).toFixed(1).padStart(5)}%  ${key}`);
}
