// The web chat in a real browser: Debian's Chromium driven by playwright-core
// against the real server binary. Two people sign up, become friends and
// chat; one loses the network, misses messages and gets them on
// reconnecting; one closes the page and finds what was sent meanwhile on
// coming back; presence dots follow. Screenshots go to $SCREENSHOTS (default
// target/webchat).
//
// Needs CHAT_SERVER_BIN (the built chat-server binary) and Chromium at
// $CHROMIUM (default /usr/bin/chromium).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const BIN = process.env.CHAT_SERVER_BIN;
const SHOTS = resolve(process.env.SCREENSHOTS || "target/webchat");
const WAIT = { timeout: 20000 };

/** Starts the binary on a free port; resolves with its base URL. */
function startServer() {
  assert.ok(BIN, "set CHAT_SERVER_BIN to the chat-server binary");
  const server = spawn(
    BIN,
    [
      "--memory",
      "--listen",
      "127.0.0.1:0",
      "--log-format",
      "json",
      // Short presence timings, so going offline shows within seconds.
      "--heartbeat-secs",
      "1",
      "--presence-timeout-secs",
      "3",
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  process.on("exit", () => server.kill("SIGKILL"));
  return new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start")), 30000);
    server.on("exit", (code) => reject(new Error(`server exited with ${code}`)));
    createInterface({ input: server.stdout }).on("line", (line) => {
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.fields && entry.fields.message === "chat server listening") {
        clearTimeout(timer);
        resolveUrl({ server, url: `http://${entry.fields.addr}` });
      }
    });
  });
}

async function signUp(page, url, username) {
  await page.goto(url);
  await page.fill("#username", username);
  await page.fill("#password", "correct horse battery");
  await page.click("#signup-button");
  await page.waitForSelector("body[data-connection=online]", WAIT);
}

const friend = (page, username) => page.locator(`#friends li[data-user="${username}"]`);
const message = (page, text) => page.locator("#messages li .text", { hasText: text });

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

test("two people chat in Chromium, through a network drop and a closed page", async () => {
  mkdirSync(SHOTS, { recursive: true });
  const { server, url } = await startServer();
  // playwright-core gives the browser a fresh, empty profile of its own
  // (it refuses --user-data-dir for launch()).
  const browser = await chromium
    .launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    })
    .catch((e) => {
      server.kill("SIGTERM");
      throw e;
    });
  after(async () => {
    await browser.close().catch(() => {});
    server.kill("SIGTERM");
  });
  const viewport = { width: 960, height: 600 };
  const aliceContext = await browser.newContext({ viewport });
  const bobContext = await browser.newContext({ viewport });
  const alice = await aliceContext.newPage();
  let bob = await bobContext.newPage();
  for (const [who, page] of [["alice", alice], ["bob", bob]]) {
    page.on("pageerror", (e) => assert.fail(`${who}'s page threw: ${e.message}`));
  }

  // Sign up, and become friends: Alice asks, Bob accepts.
  await signUp(alice, url, "alice");
  await shot(alice, "1-signed-in");
  await signUp(bob, url, "bob");
  await alice.fill("#add-friend", "bob");
  await alice.click("#add-friend-form button");
  await bob.locator("#requests li", { hasText: "alice" }).getByRole("button", { name: "Accept" }).click(WAIT);
  await friend(alice, "bob").waitFor(WAIT);
  await friend(bob, "alice").waitFor(WAIT);

  // Both online: green dots.
  await alice.waitForSelector('#friends li[data-user="bob"][data-presence="online"]', WAIT);
  await bob.waitForSelector('#friends li[data-user="alice"][data-presence="online"]', WAIT);

  // Chat, live both ways.
  await friend(alice, "bob").click();
  await alice.fill("#message-input", "Hi Bob!");
  await alice.press("#message-input", "Enter");
  await friend(bob, "alice").click();
  await message(bob, "Hi Bob!").waitFor(WAIT);
  await bob.fill("#message-input", "Hello Alice, <b>not bold</b>");
  await bob.click("#send-button");
  await message(alice, "Hello Alice, <b>not bold</b>").waitFor(WAIT);
  // Text stays text.
  assert.equal(await alice.locator("#messages b").count(), 0);
  await shot(alice, "2-chat");

  // Bob's network drops. Alice sees him go offline and writes meanwhile.
  await bobContext.setOffline(true);
  await bob.waitForSelector("body[data-connection=offline]", WAIT);
  await alice.waitForSelector('#friends li[data-user="bob"][data-presence="offline"]', WAIT);
  await alice.fill("#message-input", "Are you there?");
  await alice.press("#message-input", "Enter");
  await alice.fill("#message-input", "I'll wait.");
  await alice.press("#message-input", "Enter");
  await message(alice, "I'll wait.").waitFor(WAIT);
  await shot(alice, "3-bob-offline");
  assert.equal(await message(bob, "Are you there?").count(), 0);

  // The network is back: Bob reconnects, syncs, and has both, in order.
  await bobContext.setOffline(false);
  await bob.waitForSelector("body[data-connection=online]", WAIT);
  await message(bob, "I'll wait.").waitFor(WAIT);
  const texts = await bob.locator("#messages li .text").allTextContents();
  assert.deepEqual(texts, ["Hi Bob!", "Hello Alice, <b>not bold</b>", "Are you there?", "I'll wait."]);
  await alice.waitForSelector('#friends li[data-user="bob"][data-presence="online"]', WAIT);
  await shot(bob, "4-bob-back");

  // Bob closes the page; Alice writes; Bob opens the page again (still
  // logged in, same device) and finds it.
  await bob.close();
  await alice.waitForSelector('#friends li[data-user="bob"][data-presence="offline"]', WAIT);
  await alice.fill("#message-input", "See you tomorrow");
  await alice.press("#message-input", "Enter");
  await message(alice, "See you tomorrow").waitFor(WAIT);
  bob = await bobContext.newPage();
  bob.on("pageerror", (e) => assert.fail(`bob's page threw: ${e.message}`));
  await bob.goto(url);
  await bob.waitForSelector("body[data-connection=online]", WAIT);
  await friend(bob, "alice").click(WAIT);
  await message(bob, "See you tomorrow").waitFor(WAIT);
  await alice.waitForSelector('#friends li[data-user="bob"][data-presence="online"]', WAIT);
  await shot(bob, "5-bob-reopened");
  await shot(alice, "6-alice");
});
