import { mkdir } from "node:fs/promises";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import {
  admin,
  type RunningSample,
  type SampleEnv,
  sampleEnv,
  startSample,
} from "../support/sample.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const OUTPUT = new URL("../../test-results/browser/", import.meta.url);

describe("the sample's web page in Chromium", () => {
  let env: SampleEnv;
  let sample: RunningSample;
  let browser: Browser;

  beforeAll(async () => {
    env = sampleEnv(inject("azuriteConnectionString"));
    for (const user of ["alice", "bob"])
      expect((await admin(env, "grant", user, "Sports")).code).toBe(0);
    sample = await startSample(env);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await sample?.stop();
  });

  /** Every URL a page asked for: the page must load nothing from anywhere else. */
  const requested: string[] = [];
  async function signIn(name: string, query = ""): Promise<Page> {
    const page = await (
      await browser.newContext({ viewport: { width: 900, height: 640 } })
    ).newPage();
    page.on("request", (request) => requested.push(request.url()));
    await page.goto(`${sample.url}/${query}`);
    await page.getByLabel("Name").fill(name);
    await page.getByLabel("Name").press("Enter");
    await expect.poll(() => page.locator("#state").textContent()).toBe("connected");
    return page;
  }
  const groupsOf = (page: Page) => page.locator("#groups button.group").allTextContents();
  const logOf = (page: Page) => page.locator("#log").textContent();

  it("chats, then shows a live revocation and receives nothing more from that group", async () => {
    const alice = await signIn("alice");
    const aliceTab2 = await signIn("alice");
    const bob = await signIn("bob");
    expect(await alice.locator("#who").textContent()).toBe("alice");
    expect(await groupsOf(alice)).toEqual(["Sports"]);
    expect(await groupsOf(aliceTab2)).toEqual(["Sports"]);
    expect(await alice.locator("#connection").textContent()).not.toBe(
      await aliceTab2.locator("#connection").textContent(),
    );

    await alice.getByLabel(/Message to/).fill("hello from alice");
    await alice.getByLabel(/Message to/).press("Enter");
    for (const page of [alice, aliceTab2, bob])
      await expect.poll(() => logOf(page)).toContain("hello from alice");

    await bob.getByLabel("Whisper to user").fill("alice");
    await bob.getByLabel("Text").fill("just for you");
    await bob.getByRole("button", { name: "Whisper" }).click();
    await expect.poll(() => logOf(aliceTab2)).toContain("just for you");

    await bob.getByRole("button", { name: "Join" }).click();
    await expect.poll(() => groupsOf(bob)).toEqual(["Sports", "lobby"]);

    expect((await admin(env, "revoke", "alice", "Sports")).code).toBe(0);
    for (const page of [alice, aliceTab2]) {
      await expect.poll(() => groupsOf(page)).toEqual([]);
      await expect
        .poll(() => page.locator("#notice").textContent())
        .toBe("Your access to Sports was revoked.");
    }
    await bob.getByRole("button", { name: "Sports", exact: true }).click();
    await bob.getByLabel(/Message to/).fill("after the revoke");
    await bob.getByLabel(/Message to/).press("Enter");
    await expect.poll(() => logOf(bob)).toContain("after the revoke");
    await alice.waitForTimeout(500);
    expect(await logOf(alice)).not.toContain("after the revoke");
    expect(await logOf(aliceTab2)).not.toContain("after the revoke");

    await mkdir(OUTPUT, { recursive: true });
    await bob.screenshot({ path: new URL("chat-bob.png", OUTPUT).pathname });
    await alice.screenshot({ path: new URL("chat-alice-revoked.png", OUTPUT).pathname });
  });

  for (const [name, query, user] of [
    ["", "?protocol=signalr", "dan"],
    [" over long polling", "?protocol=signalr&transport=LongPolling", "dana"],
    [
      " over long polling with MessagePack",
      "?protocol=signalr&transport=LongPolling&hubProtocol=messagepack",
      "danny",
    ],
  ] as const)
    it(`SignalR mode${name}: the official browser client, served by the sample, chats with ws pages and shows a live revocation`, async () => {
      expect((await admin(env, "grant", user, "Sports")).code).toBe(0);
      const dan = await signIn(user, query);
      const bob = await signIn("bob");
      expect(await dan.locator("#protocol").textContent()).toBe("SignalR");
      expect(await groupsOf(dan)).toEqual(["Sports"]);
      // Who is online was asked once the client was connected, on every transport.
      await expect.poll(() => dan.locator("#online").textContent()).toMatch(/^Online: /);
      expect(await dan.locator("#notice").textContent()).not.toContain("Not connected");
      await dan.getByRole("button", { name: "Sports", exact: true }).click();
      await dan.getByLabel(/Message to/).fill(`hello from ${user}`);
      await dan.getByLabel(/Message to/).press("Enter");
      await expect.poll(() => logOf(bob)).toContain(`hello from ${user}`);
      await bob.getByRole("button", { name: "Sports", exact: true }).click();
      await bob.getByLabel(/Message to/).fill(`hello ${user} from ws`);
      await bob.getByLabel(/Message to/).press("Enter");
      await expect.poll(() => logOf(dan)).toContain(`hello ${user} from ws`);

      await dan.getByRole("button", { name: "Join" }).click();
      await expect.poll(() => groupsOf(dan)).toEqual(["Sports", "lobby"]);
      expect((await admin(env, "revoke", user, "Sports")).code).toBe(0);
      await expect.poll(() => groupsOf(dan)).toEqual(["lobby"]);
      await expect
        .poll(() => dan.locator("#notice").textContent())
        .toBe("Your access to Sports was revoked.");
      await bob.getByLabel(/Message to/).fill(`after ${user}'s revoke`);
      await bob.getByLabel(/Message to/).press("Enter");
      await expect.poll(() => logOf(bob)).toContain(`after ${user}'s revoke`);
      await dan.waitForTimeout(500);
      expect(await logOf(dan)).not.toContain(`after ${user}'s revoke`);
      const origin = new URL(sample.url).origin;
      expect(requested.filter((url) => new URL(url).origin !== origin)).toEqual([]);
      expect(requested).toContain(`${origin}/vendor/signalr.js`);
      // Long polling: its polls (GETs with the connection token and a cache buster) carried it.
      if (query.includes("LongPolling"))
        expect(requested.some((url) => /\/signalr\?id=[^&]+&_=\d+$/.test(url))).toBe(true);
      if (query.includes("messagepack"))
        expect(requested).toContain(`${origin}/vendor/signalr-msgpack.js`);
    });

  it("reconnects with backoff after the server restarts and gets the same groups back", async () => {
    const carol = await signIn("carol");
    await carol.getByRole("button", { name: "Join" }).click();
    await expect.poll(() => groupsOf(carol)).toEqual(["lobby"]);
    const port = new URL(sample.url).port;
    await sample.stop();
    await expect.poll(() => carol.locator("#state").textContent()).toMatch(/retrying/);
    sample = await startSample({ ...env, PORT: port });
    await expect
      .poll(() => carol.locator("#state").textContent(), { timeout: 20_000 })
      .toBe("connected");
    expect(await groupsOf(carol)).toEqual(["lobby"]);
  });

  it("fits a phone's width without sideways scrolling", async () => {
    const page = await (
      await browser.newContext({ viewport: { width: 360, height: 740 } })
    ).newPage();
    await page.goto(sample.url);
    await page.getByLabel("Name").fill("a-rather-long-user-name-on-a-small-phone");
    await page.getByLabel("Name").press("Enter");
    await expect.poll(() => page.locator("#state").textContent()).toBe("connected");
    await page.getByRole("button", { name: "Join" }).click();
    await expect.poll(() => groupsOf(page)).toEqual(["lobby"]);
    const width = await page.evaluate<number>("document.documentElement.scrollWidth");
    expect(width).toBeLessThanOrEqual(360);
  });

  it("keeps its width with a 1,024-character group name", async () => {
    const name = "x".repeat(1_024);
    expect((await admin(env, "grant", "wide", name)).code).toBe(0);
    const page = await signIn("wide");
    await expect.poll(() => groupsOf(page)).toEqual([name]);
    const width = await page.evaluate<number>("document.documentElement.scrollWidth");
    const viewport = await page.evaluate<number>("window.innerWidth");
    expect(width).toBeLessThanOrEqual(viewport);
  });

  it("shows who is online in each group, live, on ws and SignalR pages alike", async () => {
    for (const user of ["pat", "quinn"])
      expect((await admin(env, "grant", user, "Chess")).code).toBe(0);
    const pat = await signIn("pat");
    const onlineOf = (page: Page) => page.locator("#online").textContent();
    const countOf = (page: Page) => page.locator("#groups .online-count").allTextContents();
    await expect.poll(() => onlineOf(pat)).toBe("Online: pat");
    const quinn = await signIn("quinn", "?protocol=signalr");
    await expect.poll(() => onlineOf(pat)).toBe("Online: pat, quinn");
    await expect.poll(() => onlineOf(quinn)).toBe("Online: pat, quinn");
    expect(await countOf(pat)).toEqual(["2 online"]);
    await quinn.close();
    await expect.poll(() => onlineOf(pat)).toBe("Online: pat");
    expect(await countOf(pat)).toEqual(["1 online"]);
  });

  it("refuses a bad token and says so", async () => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(sample.url);
    await page.getByLabel(/paste a token/).fill("not-a-token");
    await page.getByRole("button", { name: "Use token" }).click();
    await expect
      .poll(() => page.locator("#notice").textContent())
      .toBe("The server refused that token: sign in again.");
    expect(await page.locator("#signin").isVisible()).toBe(true);
  });
});
