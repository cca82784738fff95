// The web chat page in headless Chromium against the real tidings binary:
// two users and a second device, an edit conflict, and offline catch-up.
// Run by `make test` (TIDINGS_BIN points at the built binary).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.env.TIDINGS_BIN
  || join(process.env.HOME, '.cache/tidings-target/debug/tidings');
const WAIT = 15000;

let node, browser, base, dataDir;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'tidings-browser-'));
  node = spawn(bin, ['--dev', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, TIDINGS_LOG: 'warn' },
  });
  base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the node did not start')), WAIT);
    createInterface({ input: node.stdout }).on('line', (line) => {
      const m = line.match(/^listening on (http:\/\/\S+)$/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    node.on('exit', (code) => reject(new Error(`the node exited with ${code}`)));
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (node && node.exitCode === null) {
    const exited = new Promise((resolve) => node.once('exit', resolve));
    node.kill('SIGTERM');
    assert.equal(await exited, 0, 'the node shuts down cleanly');
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function device(user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(base);
  await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-button').click();
  await page.getByTestId('me').filter({ hasText: user }).waitFor();
  await page.locator('[data-testid=banner][data-state=connected], [data-testid=banner][hidden]').first().waitFor({ state: 'attached' });
  return { context, page };
}

const messageTexts = (page) => page.getByTestId('message-text').allTextContents();

async function waitForText(page, text) {
  await page.getByTestId('message-text').filter({ hasText: text }).first().waitFor();
}

async function send(page, text) {
  await page.getByTestId('composer-input').fill(text);
  await page.getByTestId('composer-send').click();
}

test('two users and a second device chat, conflict, and catch up', async () => {
  const alice1 = await device('alice');
  const alice2 = await device('alice');
  const bob = await device('bob');

  // Alice opens a direct conversation with Bob.
  await alice1.page.getByTestId('new-dm-user').fill('bob');
  await alice1.page.getByTestId('new-dm-button').click();
  for (const d of [alice2, bob]) {
    await d.page.locator('[data-testid=conv-item][data-conv="dm:alice:bob"]').click();
  }

  await send(bob.page, 'hello alice');
  for (const d of [alice1, alice2, bob]) await waitForText(d.page, 'hello alice');
  await send(alice1.page, 'hi bob');
  for (const d of [alice1, alice2, bob]) await waitForText(d.page, 'hi bob');

  // Presence: Bob sees Alice online.
  await bob.page.locator('[data-testid=presence][data-user=alice][data-online=true]').waitFor();

  // Edit conflict: Alice starts editing on her second device; meanwhile
  // her first device edits the same message.
  const mine = alice2.page.locator('[data-testid=message]', { hasText: 'hi bob' });
  alice2.page.once('dialog', async (dialog) => {
    alice1.page.once('dialog', (d) => d.accept('hi bob, from the laptop'));
    await alice1.page.locator('[data-testid=message]', { hasText: 'hi bob' }).getByTestId('edit').click();
    await waitForText(alice1.page, 'hi bob, from the laptop');
    await dialog.accept('hi bob, from the phone');
  });
  await mine.getByTestId('edit').click();
  const conflict = alice2.page.getByTestId('conflict');
  await conflict.waitFor();
  assert.equal(await alice2.page.getByTestId('conflict-mine').textContent(), 'hi bob, from the phone');
  assert.equal(await alice2.page.getByTestId('conflict-theirs').textContent(), 'hi bob, from the laptop');
  await alice2.page.getByTestId('conflict-keep').click();
  await conflict.waitFor({ state: 'hidden' });
  for (const d of [alice1, alice2, bob]) await waitForText(d.page, 'hi bob, from the phone');

  // Bob's device goes offline, misses three messages, and catches up.
  await bob.context.setOffline(true);
  await bob.page.evaluate(() => state.ws.close());
  await bob.page.getByTestId('banner').filter({ hasText: 'Reconnecting' }).waitFor();
  for (const text of ['missed one', 'missed two', 'missed three']) await send(alice1.page, text);
  await waitForText(alice1.page, 'missed three');
  await bob.context.setOffline(false);
  await waitForText(bob.page, 'missed three');
  const texts = await messageTexts(bob.page);
  assert.deepEqual(texts, [
    'hello alice', 'hi bob, from the phone', 'missed one', 'missed two', 'missed three',
  ]);

  // Text is text: markup in a message is shown, not interpreted.
  await send(bob.page, '<b>bold?</b>');
  await waitForText(alice1.page, '<b>bold?</b>');
  assert.equal(await alice1.page.locator('[data-testid=message-text] b').count(), 0);

  await alice1.page.screenshot({ path: join(tmpdir(), 'tidings-chat.png') });
});
