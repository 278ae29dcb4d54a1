import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const read = (path: string) => readFileSync(join(ROOT, path), "utf8");
const DOCS = [
  "README.md",
  "sample/README.md",
  "docs/azure-store.md",
  "docs/bindings.md",
  "docs/history.md",
  "docs/presence.md",
  "docs/reliability.md",
  "docs/performance.md",
  "docs/operations.md",
];

/** An example as the README shows it: imported from the package, not from the repository. */
const asPublished = (code: string) =>
  code
    .replaceAll('"../adapters/index.js"', '"hub-membership"')
    .replaceAll('"../adapters/hubs/ws.js"', '"hub-membership/ws"')
    .replaceAll('"../adapters/hubs/socket-io.js"', '"hub-membership/socket.io"')
    .replaceAll('"../adapters/hubs/signalr.js"', '"hub-membership/signalr"');

/** GitHub's anchor for a heading. */
const anchor = (heading: string) =>
  heading
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, "")
    .replaceAll(" ", "-");

describe("the documentation", () => {
  for (const example of ["examples/ws.ts", "examples/signalr.ts", "examples/socket-io.ts"]) {
    it(`shows ${example} (type-checked by npm test) exactly, in under 25 lines`, () => {
      const code = read(example);
      expect(code.trimEnd().split("\n").length).toBeLessThan(25);
      expect(read("README.md")).toContain(`\`\`\`ts\n${asPublished(code).trimEnd()}\n\`\`\``);
    });
  }

  it("keeps the root README a newcomer's read", () => {
    expect(read("README.md").split("\n").length).toBeLessThanOrEqual(300);
  });

  for (const doc of DOCS) {
    it(`${doc}: every relative link and anchor resolves`, () => {
      const text = read(doc).replace(/```[\s\S]*?```/g, "");
      const headings = (path: string) =>
        new Set(
          read(path)
            .replace(/```[\s\S]*?```/g, "")
            .split("\n")
            .filter((line) => line.startsWith("#"))
            .map((line) => anchor(line.replace(/^#+\s*/, ""))),
        );
      const links = [...text.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1] as string);
      expect(links.length).toBeGreaterThan(0);
      for (const link of links.filter((l) => !/^[a-z]+:/.test(l))) {
        const [path, hash] = link.split("#") as [string, string | undefined];
        const target = path === "" ? doc : join(dirname(doc), path);
        expect(existsSync(join(ROOT, target)), `${doc} → ${link}`).toBe(true);
        if (hash) expect(headings(target), `${doc} → ${link}`).toContain(hash);
      }
    });
  }
});
