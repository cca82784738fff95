// The web chat page in headless Chromium against the real `tidings` binary:
// two users and a second device of one of them chat in a group, an edit
// conflict shows both versions, a device that was offline catches up with
// exactly what it missed (also past the node's reply byte bound), history
// pages in as the list scrolls up, and the page's token is refreshed on its
// open socket.
//
// Run by `make browser-test` (TIDINGS_BIN points at the built binary):
//   TIDINGS_BIN=path/to/tidings node --test
// CHROMIUM overrides the browser (default /usr/bin/chromium). The node's log
// goes to $TMPDIR/tidings-browser-node.log; the final screenshot to
// $TMPDIR/tidings-chat.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const WAIT = 15000;          // for any one thing to show up on a page
const STARTUP_WAIT = 30000;  // for the node to say it listens
const API_KEY = 'browser-test-api-key';

let node;
let browser;
let base;
let dataDir;
const pageErrors = []; // uncaught exceptions in any page fail the run

function nodeBinary() {
  if (process.env.TIDINGS_BIN) return resolve(process.env.TIDINGS_BIN);
  const candidates = [
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, 'debug/tidings'),
    process.env.HOME && join(process.env.HOME, '.cache/tidings-target/debug/tidings'),
    join(here, '../../target/debug/tidings'),
  ].filter(Boolean);
  return candidates.find((p) => existsSync(p)) ?? candidates[candidates.length - 1];
}

// Starts a node on a free port with `extra` flags: { proc, dir, base },
// once it has printed the one line that says it accepts connections.
function spawnNode(extra = [], log = 'tidings-browser-node.log') {
  const bin = nodeBinary();
  assert.ok(existsSync(bin), `no tidings binary at ${bin}; build it or set TIDINGS_BIN`);
  const dir = mkdtempSync(join(tmpdir(), 'tidings-browser-'));
  const proc = spawn(bin, ['--dev', '--listen', '127.0.0.1:0', '--data-dir', dir, '--api-key', API_KEY, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stderr.pipe(createWriteStream(join(tmpdir(), log)));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`the node did not say it listens within ${STARTUP_WAIT} ms`)), STARTUP_WAIT);
    createInterface({ input: proc.stdout }).on('line', (line) => {
      const m = line.match(/^listening on (http:\/\/\S+)$/);
      if (m) { clearTimeout(timer); resolvePromise({ proc, dir, base: m[1] }); }
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the node exited (${code ?? signal}) before listening; see its log`));
    });
    proc.once('error', reject);
  });
}

// Stops a node with SIGTERM (SIGKILL after 10 s); resolves with its exit code.
async function stopNode(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
  const exited = new Promise((res) => proc.once('exit', (code) => res(code)));
  proc.kill('SIGTERM');
  const killer = setTimeout(() => proc.kill('SIGKILL'), 10000);
  const code = await exited;
  clearTimeout(killer);
  return code;
}

// The binary embeds the page at build time; a binary built before the last
// change to node/assets would test an old page.
async function assertServesCurrentAssets() {
  for (const [path, file] of [['/', 'index.html'], ['/app.js', 'app.js'], ['/app.css', 'app.css']]) {
    const served = await (await fetch(new URL(path, base))).text();
    const onDisk = readFileSync(join(here, '../../node/assets', file), 'utf8');
    assert.ok(served === onDisk, `the node serves an old ${file}; rebuild the tidings binary`);
  }
}

before(async () => {
  ({ proc: node, dir: dataDir, base } = await spawnNode());
  await assertServesCurrentAssets();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  assert.deepEqual(pageErrors, [], 'no uncaught exceptions in the page');
  if (node) assert.equal(await stopNode(node), 0, 'the node exits 0 on SIGTERM');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

// ---- helpers -------------------------------------------------------------------

const exactly = (text) => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);

// One device: its own browser context (its own sessionStorage), signed in.
async function device(user, at = base, watch = () => {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (err) => pageErrors.push(`${user}: ${err.message}`));
  watch(page);
  await page.goto(at);
  await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-button').click();
  await page.getByTestId('me').filter({ hasText: exactly(user) }).waitFor();
  await connected(page);
  return { user, context, page };
}

const connected = (page) => page.locator('[data-testid=banner][data-state=connected]').waitFor();

// A message the node has acknowledged (it has a version), by its exact text.
const message = (page, text) => page.locator('[data-testid=message][data-version]')
  .filter({ has: page.getByTestId('message-text').filter({ hasText: exactly(text) }) });

async function sees(devices, text) {
  for (const d of devices) await message(d.page, text).waitFor();
}

async function send(d, text) {
  await d.page.getByTestId('composer-input').fill(text);
  await d.page.getByTestId('composer-send').click();
  await message(d.page, text).waitFor();
}

const texts = (page) => page.locator('[data-testid=messages] [data-testid=message-text]').allTextContents();

async function openConv(d, name) {
  await d.page.getByTestId('conv-item').filter({ hasText: name }).click();
  await d.page.getByTestId('conv-title').filter({ hasText: exactly(name) }).waitFor();
}

async function http(method, path, token, body) {
  const res = await fetch(new URL(path, base), {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(res.ok, `${method} ${path}: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function devToken(user) {
  const res = await fetch(new URL('/v1/dev/token', base), {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }),
  });
  assert.equal(res.status, 200);
  return (await res.json()).token;
}

// ---- scenarios -----------------------------------------------------------------

test('two users and a second device chat, resolve edit conflicts, and catch up after going offline', { timeout: 180000 }, async () => {
  const alice1 = await device('alice');
  const alice2 = await device('alice');
  const bob = await device('bob');

  // Alice starts a group with Bob; it shows up on every device, hers included.
  await alice1.page.getByTestId('new-group-members').fill('bob');
  await alice1.page.getByTestId('new-group-title').fill('Launch plan');
  await alice1.page.getByTestId('new-group-button').click();
  await alice1.page.getByTestId('conv-title').filter({ hasText: 'Launch plan' }).waitFor();
  await openConv(alice2, 'Launch plan');
  await openConv(bob, 'Launch plan');

  // Presence: each sees the other online.
  await bob.page.locator('[data-testid=presence][data-user=alice][data-online=true]').waitFor();
  await alice1.page.locator('[data-testid=presence][data-user=bob][data-online=true]').waitFor();

  // Typing: Bob sees Alice typing, and the indicator goes away by itself.
  await alice1.page.getByTestId('composer-input').pressSequentially('hm');
  const typing = bob.page.getByTestId('typing');
  await typing.filter({ hasText: 'alice is typing…' }).waitFor();
  await bob.page.waitForFunction(() => document.querySelector('[data-testid=typing]').textContent === '', null, { timeout: WAIT });
  await alice1.page.getByTestId('composer-input').fill('');

  // Bob sends: both of Alice's devices see it. Alice sends: Bob and her other device see it.
  await send(bob, 'hello alice');
  await sees([alice1, alice2, bob], 'hello alice');
  await send(alice1, 'hi bob');
  await sees([alice1, alice2, bob], 'hi bob');

  // Edit conflict: Alice starts editing on her phone (revision 1); meanwhile
  // her laptop edits the same message; the phone's save is refused.
  await message(alice2.page, 'hi bob').getByTestId('edit').click();
  const phoneEditor = alice2.page.getByTestId('edit-input');
  await phoneEditor.waitFor();
  await message(alice1.page, 'hi bob').getByTestId('edit').click();
  await alice1.page.getByTestId('edit-input').fill('hi bob, from the laptop');
  await alice1.page.getByTestId('edit-save').click();
  await sees([alice1, bob], 'hi bob, from the laptop');
  await phoneEditor.fill('hi bob, from the phone');
  await alice2.page.getByTestId('edit-save').click();
  const conflict = alice2.page.getByTestId('conflict');
  await conflict.waitFor();
  assert.equal(await alice2.page.getByTestId('conflict-mine').textContent(), 'hi bob, from the phone');
  assert.equal(await alice2.page.getByTestId('conflict-theirs').textContent(), 'hi bob, from the laptop');
  await alice2.page.screenshot({ path: join(tmpdir(), 'tidings-conflict.png') });
  // Keep mine: the edit goes again on top of the current revision.
  await alice2.page.getByTestId('conflict-keep').click();
  await conflict.waitFor({ state: 'hidden' });
  await sees([alice1, alice2, bob], 'hi bob, from the phone');
  await message(bob.page, 'hi bob, from the phone').and(bob.page.locator('[data-rev="3"]'))
    .getByTestId('edited').waitFor();

  // A delete wins over an edit that was based on an older revision; the
  // person takes the current state (deleted) and the conflict goes away.
  await message(alice2.page, 'hi bob, from the phone').getByTestId('edit').click();
  await alice2.page.getByTestId('edit-input').waitFor();
  await message(alice1.page, 'hi bob, from the phone').getByTestId('delete').click();
  await sees([alice1, bob], 'message deleted');
  await alice2.page.getByTestId('edit-input').fill('one more try');
  await alice2.page.getByTestId('edit-save').click();
  await conflict.waitFor();
  assert.equal(await alice2.page.getByTestId('conflict-mine').textContent(), 'one more try');
  assert.equal(await alice2.page.getByTestId('conflict-theirs').textContent(), '(deleted)');
  assert.equal(await alice2.page.getByTestId('conflict-keep').isDisabled(), true);
  await alice2.page.getByTestId('conflict-take').click();
  await conflict.waitFor({ state: 'hidden' });
  await sees([alice2], 'message deleted');

  // Bob's device goes offline. What he writes meanwhile waits as pending;
  // Alice sends three messages he misses.
  await bob.context.setOffline(true);
  await bob.page.locator('[data-testid=banner][data-state=offline]').waitFor();
  await bob.page.getByTestId('composer-input').fill('written offline');
  await bob.page.getByTestId('composer-send').click();
  await bob.page.locator('[data-testid=message][data-pending=true]').filter({ hasText: 'written offline' }).waitFor();
  for (const text of ['missed one', 'missed two', 'missed three']) await send(alice1, text);

  // Back online: it resumes with sync, gets exactly the three it missed, and
  // its pending message goes out once (same cmid) after them.
  await bob.context.setOffline(false);
  await bob.page.locator('[data-testid=banner][data-state=connected][data-caught-up="3"]').waitFor();
  await sees([bob, alice1, alice2], 'written offline');
  const expected = ['hello alice', 'message deleted', 'missed one', 'missed two', 'missed three', 'written offline'];
  for (const d of [bob, alice1, alice2]) {
    assert.deepEqual(await texts(d.page), expected, `${d.user}'s messages`);
    const versions = await d.page.locator('[data-testid=messages] [data-version]').evaluateAll(
      (els) => els.map((e) => Number(e.dataset.version)));
    assert.deepEqual(versions, [...versions].sort((a, b) => a - b), 'in version order');
    assert.equal(new Set(versions).size, versions.length, 'no duplicates');
  }
  assert.equal(await bob.page.locator('[data-testid=message][data-pending]').count(), 0);

  // Text is text: markup in a message is shown, not interpreted.
  await send(bob, '<b>bold?</b> <img src=x onerror="window.pwned=1">');
  await sees([alice1], '<b>bold?</b> <img src=x onerror="window.pwned=1">');
  assert.equal(await alice1.page.locator('[data-testid=messages] b, [data-testid=messages] img').count(), 0);
  assert.equal(await alice1.page.evaluate(() => window.pwned), undefined);

  await alice1.page.screenshot({ path: join(tmpdir(), 'tidings-chat.png') });
  await Promise.all([alice1, alice2, bob].map((d) => d.context.close()));
});

test('history pages in on scroll; direct conversations and notifications', { timeout: 120000 }, async () => {
  // 130 messages from carol to dave, sent over HTTP before either opens the page.
  const carolToken = await devToken('carol');
  let conv;
  for (let i = 1; i <= 130; i++) {
    const ack = await http('POST', '/v1/users/dave/messages', carolToken, { body: `message ${i}`, cmid: `seed-${i}` });
    conv = ack.conv;
  }
  assert.equal(conv, 'dm:carol:dave');

  // A backend notifies dave before he is online: it comes with his first sync.
  await http('POST', '/v1/users/dave/notifications', API_KEY, { payload: 'welcome, dave' });

  // Dave opens the direct conversation from the form (the same one, every time).
  const dave = await device('dave');
  await dave.page.getByTestId('new-dm-user').fill('carol');
  await dave.page.getByTestId('new-dm-button').click();
  await dave.page.getByTestId('conv-title').filter({ hasText: exactly('carol') }).waitFor();
  await message(dave.page, 'message 130').waitFor();
  const before = (await texts(dave.page)).length;
  assert.ok(before < 130, `only the latest page at first, not ${before}`);

  // Scrolling to the top loads older pages until the beginning.
  await dave.page.waitForFunction(() => {
    const list = document.querySelector('[data-testid=messages]');
    list.scrollTop = 0;
    return list.querySelector('[data-testid=message-text]')?.textContent === 'message 1';
  }, null, { timeout: WAIT, polling: 100 });
  assert.deepEqual(await texts(dave.page), Array.from({ length: 130 }, (_, i) => `message ${i + 1}`));
  assert.equal(await dave.page.getByTestId('conv-item').count(), 1);

  // Notifications: the one from before he signed in, and one pushed live.
  const notifications = dave.page.getByTestId('notification');
  await notifications.filter({ hasText: 'welcome, dave' }).waitFor({ state: 'attached' });
  await http('POST', '/v1/users/dave/notifications', API_KEY, { payload: { text: 'build 42 passed' } });
  await notifications.filter({ hasText: 'build 42 passed' }).waitFor({ state: 'attached' });
  assert.equal(await dave.page.getByTestId('notification-count').textContent(), '2');
  await dave.page.getByTestId('notifications').locator('summary').click();
  await notifications.first().waitFor();

  await dave.context.close();
});

test('the page refreshes its token on the open socket, which outlives the first token', { timeout: 60000 }, async () => {
  // Tokens of four seconds: the page must refresh on the socket it has,
  // or the node closes it with 4001 and the page connects again.
  const short = await spawnNode(['--dev-token-ttl', '4s'], 'tidings-browser-refresh-node.log');
  try {
    const sockets = [];
    const watch = (page) => page.on('websocket', (ws) => {
      const socket = { closed: false };
      ws.on('close', () => { socket.closed = true; });
      sockets.push(socket);
    });
    const dana = await device('dana', short.base, watch);
    const exp = (page) => page.evaluate(() => {
      const { token } = JSON.parse(sessionStorage.getItem('tidings.session'));
      return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp;
    });
    const first = await exp(dana.page);
    // Until the first token is two seconds past its expiry and the page
    // holds a newer one (polled; bounded by the test's timeout).
    await dana.page.waitForFunction((first) => {
      const { token } = JSON.parse(sessionStorage.getItem('tidings.session'));
      const now = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp;
      return Date.now() / 1000 > first + 2 && now > first;
    }, first, { timeout: 20000, polling: 200 });
    assert.ok((await exp(dana.page)) > first, 'the page holds a newer token');
    assert.equal(sockets.length, 1, 'the page never had to connect again');
    assert.equal(sockets[0].closed, false, 'the first socket is still open');
    // And it still serves: a note to self in a new group is acknowledged.
    await dana.page.getByTestId('new-group-members').fill('erin');
    await dana.page.getByTestId('new-group-title').fill('refreshed');
    await dana.page.getByTestId('new-group-button').click();
    await dana.page.getByTestId('conv-title').filter({ hasText: exactly('refreshed') }).waitFor();
    await send(dana, 'still connected');
    assert.equal(sockets.length, 1);
    await dana.context.close();
  } finally {
    assert.equal(await stopNode(short.proc), 0, 'the second node exits 0 on SIGTERM');
    rmSync(short.dir, { recursive: true, force: true });
  }
});

test('a page that was offline gets everything it missed, past the reply byte bound', { timeout: 120000 }, async () => {
  // Replies of 32 KiB at most: what a page missed in a dozen conversations
  // (10 KB each) does not fit in one `synced`, which then says `more`.
  const small = await spawnNode(['--max-reply-bytes', '32768'], 'tidings-browser-more-node.log');
  try {
    const fran = await device('fran', small.base);
    const res = await fetch(new URL('/v1/dev/token', small.base), {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: 'gus' }),
    });
    const gus = (await res.json()).token;
    const call = async (path, body) => {
      const r = await fetch(new URL(path, small.base), {
        method: 'POST',
        headers: { authorization: `Bearer ${gus}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      const text = await r.text();
      assert.ok(r.ok, `${path}: HTTP ${r.status} ${text}`);
      return JSON.parse(text);
    };
    const names = 'abcdefghijkl'.split('').map((c) => `room ${c}`);
    const convs = [];
    for (const title of names) convs.push((await call('/v1/conversations', { members: ['fran'], title })).conv);
    for (const title of names) {
      await fran.page.getByTestId('conv-item').filter({ hasText: exactly(title) }).waitFor();
    }
    await fran.context.setOffline(true);
    await fran.page.locator('[data-testid=banner][data-state=offline]').waitFor();
    for (const [i, conv] of convs.entries()) {
      await call(`/v1/conversations/${encodeURIComponent(conv)}/messages`, { body: `missed in ${names[i]} ${'x'.repeat(10000)}` });
    }
    await fran.context.setOffline(false);
    await connected(fran.page);
    for (const title of names) {
      await openConv(fran, title);
      await fran.page.locator('[data-testid=message][data-version]')
        .filter({ has: fran.page.getByTestId('message-text').filter({ hasText: new RegExp(`^missed in ${title} x+$`) }) })
        .waitFor();
    }
    await fran.context.close();
  } finally {
    assert.equal(await stopNode(small.proc), 0, 'the third node exits 0 on SIGTERM');
    rmSync(small.dir, { recursive: true, force: true });
  }
});
