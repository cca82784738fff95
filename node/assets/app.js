// Tidings web chat: plain JavaScript, no build step, no dependencies.
//
// Every piece of text that comes from a person or from the network goes
// into the page through textContent; nothing is ever parsed as HTML.
//
// The page keeps, per conversation, the events it has applied (keyed by
// version, so a push, a history page and a sync reply can overlap without
// duplicates) and the highest version it has seen. After every (re)connect
// it sends `sync` with those versions and merges what it missed, then
// resends the messages that were never acknowledged, with their cmid.
//
// A socket lives as long as the token it was opened with: before it
// expires the page gets a new one from the dev token endpoint and sends
// `refresh` on the open socket, which keeps it open.
'use strict';

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;
const REQUEST_TIMEOUT_MS = 10000;
const HEARTBEAT_EVERY_MS = 20000;
const MAX_SYNC_ROUNDS = 100;       // `sync` again while a reply says `more`, at most this often
const REFRESH_MARGIN_MS = 60000;   // refresh this long before the token expires
const REFRESH_RETRY_MS = 5000;
const PRESENCE_EVERY_MS = 10000;
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOW_MS = 3000;
const PAGE_SIZE = 50;
const FORWARD_PAGE_SIZE = 200;
const SESSION_KEY = 'tidings.session';
const USER_ID = /^[A-Za-z0-9_.-]{1,64}$/;

const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  token: null,
  ws: null,
  connected: false,
  attempt: 0,                 // reconnect attempts since the last open socket
  retryTimer: null,
  countdownTimer: null,
  heartbeatTimer: null,
  refreshTimer: null,
  nextReq: 1,
  requests: new Map(),        // req -> {resolve, reject}
  convs: new Map(),           // conv id -> conversation record (newConv)
  notifications: [],
  notificationsSeen: 0,
  pending: new Map(),         // cmid -> {conv, body, acked}: sent, not yet seen as an event
  open: null,                 // id of the conversation on screen
  presence: {},               // user -> {online, devices}
  typing: new Map(),          // conv -> Map(user -> timer)
  lastTypingSent: 0,
  editing: null,              // {conv, target, rev, draft}: an inline edit in progress
  conflict: null,             // {conv, target, action, mine, current}
  loadingOlder: false,
  renderQueued: false,
};

// A failure that is not the node's answer: the socket went away or a reply
// never came. Sends that fail this way stay pending and are resent.
class Disconnected extends Error {}

const isNodeError = (err) => err && err.type === 'error';

// ---- small DOM helpers -------------------------------------------------------

function el(tag, { cls, testid, text } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (testid) node.dataset.testid = testid;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(text, testid, onclick) {
  const b = el('button', { testid, text });
  b.type = 'button';
  b.onclick = onclick;
  return b;
}

function timeOf(ts) {
  const t = el('time', { text: new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) });
  t.dateTime = new Date(ts).toISOString();
  return t;
}

let statusTimer = null;
function showStatus(text) {
  $('status').textContent = text;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { $('status').textContent = ''; }, 6000);
}

// ---- connection banner -------------------------------------------------------

function showBanner(kind, detail) {
  const b = $('banner');
  let text;
  switch (kind) {
    case 'connecting': text = 'Connecting…'; break;
    case 'connected': text = detail ? `Connected · caught up on ${detail} message${detail === 1 ? '' : 's'}` : 'Connected'; break;
    case 'reconnecting': text = `Reconnecting in ${detail}s…`; break;
    case 'offline': text = 'Offline: waiting for the network'; break;
  }
  b.hidden = false;
  b.className = `banner ${kind}`;
  b.dataset.state = kind;
  if (kind === 'connected') b.dataset.caughtUp = String(detail || 0);
  b.textContent = text;
}

// ---- the WebSocket -------------------------------------------------------------

// Exponential backoff with full jitter: anywhere between 0 and the ceiling.
function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.random() * ceiling;
}

function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`;
}

function connect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  if (!state.token || state.ws) return;
  if (!navigator.onLine) { showBanner('offline'); return; }
  showBanner('connecting');
  const ws = new WebSocket(wsUrl());
  let opened = false;
  state.ws = ws;
  ws.onopen = () => {
    opened = true;
    state.connected = true;
    onConnected();
  };
  ws.onmessage = (msg) => {
    let frame;
    try { frame = JSON.parse(msg.data); } catch { return; }
    onFrame(frame);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return; // a socket we already gave up on
    forgetConnection();
    onDisconnected(opened);
  };
}

// Drops the current socket without waiting for its close handshake.
function forgetConnection() {
  const ws = state.ws;
  state.ws = null;
  state.connected = false;
  clearInterval(state.heartbeatTimer);
  clearTimeout(state.refreshTimer);
  for (const { reject } of state.requests.values()) reject(new Disconnected('disconnected'));
  state.requests.clear();
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
}

async function onConnected() {
  showBanner('connected');
  state.heartbeatTimer = setInterval(heartbeat, HEARTBEAT_EVERY_MS);
  scheduleRefresh(tokenExpiry(state.token));
  try {
    const caughtUp = await resume();
    // Only a connection that got this far resets the backoff, so a node
    // that accepts and at once drops sockets is not hammered.
    state.attempt = 0;
    if (state.connected) showBanner('connected', caughtUp);
  } catch (err) {
    if (isNodeError(err)) showStatus(`Could not resume: ${err.message}`);
    // Otherwise the socket went away meanwhile; the next connect resumes.
  }
}

async function onDisconnected(opened) {
  if (!state.token) return;
  if (!navigator.onLine) { showBanner('offline'); return; }
  // A socket that never opened may have been refused for its token (the
  // browser hides the HTTP 401); ask over HTTP, and get a new one if so.
  if (!opened && !(await tokenStillValid())) return;
  if (state.ws || !state.token) return; // connected again meanwhile (the network came back)
  scheduleReconnect();
}

function scheduleReconnect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  const delay = backoffDelay(state.attempt++);
  const due = Date.now() + delay;
  const countdown = () => showBanner('reconnecting', Math.max(1, Math.ceil((due - Date.now()) / 1000)));
  countdown();
  state.countdownTimer = setInterval(countdown, 250);
  state.retryTimer = setTimeout(connect, delay);
}

// A socket can die without a close (a laptop lid, a NAT timeout): a ping
// that gets no pong within the request timeout replaces the socket.
async function heartbeat() {
  if (!state.connected) return;
  try {
    await request({ type: 'ping' });
  } catch (err) {
    if (err instanceof Disconnected && state.ws) {
      forgetConnection();
      scheduleReconnect();
    }
  }
}

function request(frame) {
  return new Promise((resolve, reject) => {
    if (!state.connected) { reject(new Disconnected('offline')); return; }
    const req = `w${state.nextReq++}`;
    const timer = setTimeout(() => {
      state.requests.delete(req);
      reject(new Disconnected(`no reply to ${frame.type}`));
    }, REQUEST_TIMEOUT_MS);
    state.requests.set(req, {
      resolve: (reply) => { clearTimeout(timer); resolve(reply); },
      reject: (err) => { clearTimeout(timer); reject(err); },
    });
    state.ws.send(JSON.stringify({ ...frame, req }));
  });
}

// A frame that needs no reply (typing).
function tell(frame) {
  if (state.connected) state.ws.send(JSON.stringify(frame));
}

function onFrame(frame) {
  const waiting = frame.req && state.requests.get(frame.req);
  if (waiting) {
    state.requests.delete(frame.req);
    if (frame.type === 'error') waiting.reject(frame); else waiting.resolve(frame);
    return;
  }
  switch (frame.type) {
    case 'event': applyEvents([frame], { countUnread: true }); break;
    case 'notification': applyNotification(frame); break;
    case 'typing': showTyping(frame.conv, frame.user); break;
    // A cluster node lost a link: catch up as after a reconnect.
    case 'resync': resume().catch(() => {}); break;
    case 'error': showStatus(`The node says: ${frame.message}`); break;
    default: break;
  }
}

// After every (re)connect: merge what was missed, then resend what was never
// acknowledged. Returns how many messages arrived that this page had missed.
// A `synced` reply cut at the node's byte bound says `more`: conversations
// with events to deliver were left out, so the page syncs again with the
// versions it now has (each round delivers at least one of them).
async function resume() {
  let caughtUp = 0;
  for (let round = 0; round < MAX_SYNC_ROUNDS; round += 1) {
    const seen = {};
    for (const conv of state.convs.values()) if (conv.seen > 0) seen[conv.id] = conv.seen;
    const synced = await request({
      type: 'sync', convs: seen, notifications: state.notificationsSeen, limit: PAGE_SIZE,
    });
    for (const summary of synced.convs) {
      const conv = ensureConv(summary.conv);
      mergeSummary(conv, summary);
      const named = Object.hasOwn(seen, summary.conv);
      const applied = applyEvents(summary.events, { countUnread: named });
      if (named) {
        caughtUp += applied;
        if (summary.more && summary.events.length > 0) {
          const after = summary.events[summary.events.length - 1].version;
          caughtUp += await pageForward(conv, after, summary.version);
        }
      }
      // A conversation new to this page that has more: older pages load on scroll.
    }
    synced.notifications.events.forEach(applyNotification);
    if (synced.notifications.more) await loadMoreNotifications();
    if (!synced.more) break;
  }
  await refreshConvList();
  for (const [cmid, p] of state.pending) if (!p.acked) transmit(cmid);
  refreshPresence();
  scheduleRender();
  return caughtUp;
}

// Pages forward with `history` from `after` up to `upTo` (the version that
// `sync` reported), so live pushes arriving meanwhile cannot open a gap.
async function pageForward(conv, after, upTo) {
  let applied = 0;
  while (after < upTo) {
    const page = await request({ type: 'history', conv: conv.id, after, limit: FORWARD_PAGE_SIZE });
    if (page.events.length === 0) break;
    applied += applyEvents(page.events, { countUnread: true });
    after = page.events[page.events.length - 1].version;
  }
  return applied;
}

async function refreshConvList() {
  const reply = await request({ type: 'convs' });
  for (const summary of reply.conversations) mergeSummary(ensureConv(summary.conv), summary);
  scheduleRender();
}

async function loadMoreNotifications() {
  for (;;) {
    const res = await fetch(`/v1/notifications?after=${state.notificationsSeen}&limit=200`, {
      headers: { authorization: `Bearer ${state.token}` },
    });
    if (!res.ok) return;
    const page = await res.json();
    if (page.events.length === 0) return;
    page.events.forEach(applyNotification);
  }
}

// ---- tokens and signing in ------------------------------------------------------

// A token's `exp` (unix seconds), or null if it cannot be read.
function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(payload)).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

// Refreshes the open socket's token before `exp`: within the last minute,
// or half-way through a shorter life.
function scheduleRefresh(exp) {
  clearTimeout(state.refreshTimer);
  if (exp == null) return;
  const left = exp * 1000 - Date.now();
  const delay = Math.max(0, left - Math.min(REFRESH_MARGIN_MS, left / 2));
  state.refreshTimer = setTimeout(refreshToken, delay);
}

// Gets a new token and hands it to the open socket, so the node does not
// close it (4001) when the old one expires. On failure, tries again a
// little later; a socket closed meanwhile reconnects with a new token.
async function refreshToken() {
  if (!state.connected || !state.user) return;
  try {
    const token = await fetchToken(state.user);
    const reply = await request({ type: 'refresh', token });
    state.token = token;
    saveSession();
    scheduleRefresh(reply.exp);
  } catch (err) {
    if (err instanceof Disconnected) return; // the next connect schedules again
    state.refreshTimer = setTimeout(refreshToken, REFRESH_RETRY_MS);
  }
}

async function fetchToken(user) {
  const res = await fetch('/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error?.message ?? `sign-in failed (HTTP ${res.status})`);
  return body.token;
}

// False when the token is refused and no new one can be had (back to sign-in).
async function tokenStillValid() {
  let res;
  try {
    res = await fetch('/v1/conversations', { headers: { authorization: `Bearer ${state.token}` } });
  } catch {
    return true; // the node is unreachable: keep trying
  }
  if (res.status !== 401) return true;
  try {
    state.token = await fetchToken(state.user);
    saveSession();
    return true;
  } catch {
    signOut('Your session has expired; please sign in again.');
    return false;
  }
}

function saveSession() {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user: state.user, token: state.token }));
}

async function signIn(user) {
  if (!USER_ID.test(user)) throw new Error('A user name is 1–64 letters, digits, _ . or -');
  const token = await fetchToken(user);
  start(user, token);
  saveSession();
}

function start(user, token) {
  state.user = user;
  state.token = token;
  $('me').textContent = user;
  $('session').hidden = false;
  $('login').hidden = true;
  $('app').hidden = false;
  connect();
  setInterval(refreshPresence, PRESENCE_EVERY_MS);
}

function signOut(why) {
  sessionStorage.removeItem(SESSION_KEY);
  state.token = null;
  forgetConnection();
  if (why) sessionStorage.setItem('tidings.signout', why);
  location.reload();
}

// ---- conversations and their events ----------------------------------------------

function newConv(id) {
  return {
    id,
    title: null,
    members: [],
    membersAt: 0,          // the version the member list is known at
    version: 0,            // the latest version the node has reported
    seen: 0,               // the highest version applied here
    oldest: Infinity,      // the lowest version applied here
    items: new Map(),      // version -> item
    revisions: new Map(),  // target -> newest edit/delete whose message is not loaded yet
    lastTs: 0,
    unread: 0,
  };
}

function ensureConv(id) {
  if (!state.convs.has(id)) state.convs.set(id, newConv(id));
  return state.convs.get(id);
}

function mergeSummary(conv, summary) {
  if (summary.version >= (conv.titleAt ?? 0)) {
    conv.title = summary.title ?? null;
    conv.titleAt = summary.version;
  }
  if (summary.version >= conv.membersAt) {
    conv.members = summary.members;
    conv.membersAt = summary.version;
  }
  conv.version = Math.max(conv.version, summary.version);
}

// Applies events in any order and any overlap. Returns how many new
// messages there were.
function applyEvents(events, { countUnread = false } = {}) {
  let messages = 0;
  for (const ev of events) {
    const item = applyEvent(ev);
    if (!item || item.kind !== 'message') continue;
    messages += 1;
    const conv = state.convs.get(ev.conv);
    if (countUnread && ev.conv !== state.open && ev.from !== state.user) conv.unread += 1;
  }
  if (events.length > 0) scheduleRender();
  return messages;
}

function applyEvent(ev) {
  const conv = ensureConv(ev.conv);
  if (conv.items.has(ev.version)) return null;
  conv.version = Math.max(conv.version, ev.version);
  conv.seen = Math.max(conv.seen, ev.version);
  conv.oldest = Math.min(conv.oldest, ev.version);
  conv.lastTs = Math.max(conv.lastTs, ev.ts);
  const item = { version: ev.version, from: ev.from, kind: ev.kind, ts: ev.ts };
  switch (ev.kind) {
    case 'created':
      if (conv.title === null) conv.title = ev.title ?? null;
      setMembers(conv, ev.version, ev.members);
      item.text = ev.title ? `${ev.from} created “${ev.title}”` : `${ev.from} started the conversation`;
      break;
    case 'join':
      setMembers(conv, ev.version, [...new Set([...conv.members, ...ev.users])]);
      item.text = `${ev.users.join(', ')} joined`;
      if (ev.conv === state.open) refreshPresence();
      break;
    case 'leave':
      setMembers(conv, ev.version, conv.members.filter((m) => !ev.users.includes(m)));
      item.text = `${ev.users.join(', ')} left`;
      break;
    case 'title':
      if (ev.version >= (conv.titleAt ?? 0)) {
        conv.title = ev.title;
        conv.titleAt = ev.version;
      }
      item.text = `${ev.from} renamed the group “${ev.title}”`;
      break;
    case 'message': {
      Object.assign(item, { body: ev.body, rev: 1, deleted: false, cmid: ev.cmid });
      const revision = conv.revisions.get(ev.version);
      if (revision) { Object.assign(item, revision); conv.revisions.delete(ev.version); }
      const pending = ev.cmid && state.pending.get(ev.cmid);
      if (pending && pending.conv === ev.conv) state.pending.delete(ev.cmid);
      break;
    }
    case 'edit':
      reviseMessage(conv, ev.target, { rev: ev.rev, body: ev.body });
      item.hidden = true;
      break;
    case 'delete':
      reviseMessage(conv, ev.target, { rev: ev.rev, deleted: true });
      item.hidden = true;
      break;
    default:
      item.hidden = true; // a kind this page does not know yet
  }
  conv.items.set(ev.version, item);
  return item;
}

function setMembers(conv, version, members) {
  if (version < conv.membersAt) return;
  conv.members = members;
  conv.membersAt = version;
}

// Keeps the newest revision of a message; an edit or delete that arrives
// before its message (older pages load later) waits for it.
function reviseMessage(conv, target, change) {
  const message = conv.items.get(target);
  if (message) {
    if (change.rev > message.rev) Object.assign(message, change);
    return;
  }
  const waiting = conv.revisions.get(target);
  if (!waiting || change.rev > waiting.rev) conv.revisions.set(target, { ...waiting, ...change });
}

function applyNotification(n) {
  if (n.version <= state.notificationsSeen) return;
  state.notificationsSeen = n.version;
  state.notifications.push(n);
  const count = $('notification-count');
  count.textContent = String(state.notifications.length);
  count.classList.remove('zero');
  const li = el('li', { testid: 'notification' });
  li.dataset.version = String(n.version);
  const text = typeof n.payload === 'string' ? n.payload : JSON.stringify(n.payload);
  li.append(timeOf(n.ts), document.createTextNode(text));
  $('notification-list').prepend(li);
}

// ---- rendering ---------------------------------------------------------------------

function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  queueMicrotask(() => {
    state.renderQueued = false;
    render();
  });
}

function render() {
  renderConvList();
  if (state.open) renderConversation();
}

function convName(conv) {
  if (conv.title) return conv.title;
  if (conv.id.startsWith('dm:')) {
    return conv.id.slice(3).split(':').find((u) => u !== state.user) ?? state.user;
  }
  return conv.members.filter((m) => m !== state.user).join(', ') || conv.id;
}

function renderConvList() {
  const list = $('conv-list');
  const convs = [...state.convs.values()]
    .sort((a, b) => b.lastTs - a.lastTs || convName(a).localeCompare(convName(b)));
  list.replaceChildren(...convs.map((conv) => {
    const li = el('li', { testid: 'conv-item' });
    li.dataset.conv = conv.id;
    li.title = conv.id;
    li.append(el('span', { cls: 'name', testid: 'conv-name', text: convName(conv) }));
    if (conv.id === state.open) li.classList.add('active');
    if (conv.unread > 0) {
      li.classList.add('unread');
      li.append(el('span', { cls: 'count', testid: 'unread', text: String(conv.unread) }));
    }
    li.onclick = () => openConv(conv.id);
    return li;
  }));
}

function renderConversation() {
  const conv = state.convs.get(state.open);
  $('conv-title').textContent = convName(conv);
  // Someone who left (or was removed) can no longer write here.
  const member = conv.members.length === 0 || conv.members.includes(state.user);
  $('composer-input').disabled = !member;
  $('composer-send').disabled = !member;
  $('composer-input').placeholder = member ? 'Write a message' : 'You are no longer a member of this conversation';
  renderMembers(conv);
  renderMessages(conv);
  renderTyping();
  renderConflict();
}

function renderMembers(conv) {
  $('members').replaceChildren(...conv.members.map((user) => {
    const online = !!state.presence[user]?.online;
    const li = el('li');
    const dot = el('span', { cls: online ? 'dot online' : 'dot', testid: 'presence' });
    dot.dataset.user = user;
    dot.dataset.online = String(online);
    dot.title = online ? `online on ${state.presence[user].devices} device(s)` : 'offline';
    li.append(dot, document.createTextNode(user));
    return li;
  }));
}

// Builds each message's element once per state (keyed by a signature) and
// moves nothing that did not change, so an open inline editor keeps its
// focus and text while events arrive.
function renderMessages(conv) {
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const wanted = [];
  const versions = [...conv.items.keys()].sort((a, b) => a - b);
  for (const v of versions) {
    const item = conv.items.get(v);
    if (!item.hidden) wanted.push(keyedElement(`v${v}`, signature(conv, item), () => messageElement(conv, item)));
  }
  for (const [cmid, p] of state.pending) {
    if (p.conv === conv.id) wanted.push(keyedElement(`p${cmid}`, 'pending', () => pendingElement(p)));
  }
  wanted.forEach((node, i) => {
    if (list.children[i] !== node) list.insertBefore(node, list.children[i] ?? null);
  });
  while (list.children.length > wanted.length) list.lastChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

const elementCache = new Map(); // key -> element, for the open conversation

function keyedElement(key, sig, build) {
  const cached = elementCache.get(key);
  if (cached && cached.dataset.sig === sig) return cached;
  const node = build();
  node.dataset.sig = sig;
  elementCache.set(key, node);
  return node;
}

function isEditing(conv, item) {
  const e = state.editing;
  return !!e && e.conv === conv.id && e.target === item.version;
}

function signature(conv, item) {
  if (item.kind !== 'message') return item.kind;
  if (isEditing(conv, item)) return 'editing';
  return JSON.stringify([item.rev, item.deleted, item.body]);
}

function messageElement(conv, item) {
  if (item.kind !== 'message') {
    const li = el('li', { cls: 'system', testid: 'system-event', text: item.text });
    li.dataset.version = String(item.version);
    return li;
  }
  const mine = item.from === state.user;
  const li = el('li', { cls: mine ? 'mine' : '', testid: 'message' });
  li.dataset.version = String(item.version);
  li.dataset.rev = String(item.rev);
  li.dataset.from = item.from;
  const meta = el('div', { cls: 'meta' });
  meta.append(el('span', { cls: 'from', text: item.from }), timeOf(item.ts));
  if (item.deleted) li.dataset.deleted = 'true';
  else if (item.rev > 1) meta.append(el('span', { cls: 'edited', testid: 'edited', text: '(edited)' }));
  li.append(meta);

  if (isEditing(conv, item)) {
    li.append(editorElement());
    return li;
  }
  if (item.deleted) {
    li.append(el('div', { cls: 'text deleted', testid: 'message-text', text: 'message deleted' }));
    return li;
  }
  li.append(el('div', { cls: 'text', testid: 'message-text', text: item.body }));
  if (mine) {
    const actions = el('div', { cls: 'actions' });
    actions.append(
      button('edit', 'edit', () => startEdit(conv.id, item.version)),
      button('delete', 'delete', () => deleteMessage(conv.id, item.version, item.rev, item.body)),
    );
    li.append(actions);
  }
  return li;
}

function editorElement() {
  const form = el('form', { cls: 'editor', testid: 'editor' });
  const input = el('input', { testid: 'edit-input' });
  input.value = state.editing.draft;
  input.oninput = () => { state.editing.draft = input.value; };
  input.onkeydown = (e) => { if (e.key === 'Escape') cancelEdit(); };
  const save = el('button', { testid: 'edit-save', text: 'save' });
  form.onsubmit = (e) => { e.preventDefault(); saveEdit(); };
  form.append(input, save, button('cancel', 'edit-cancel', cancelEdit));
  queueMicrotask(() => input.focus());
  return form;
}

function pendingElement(p) {
  const li = el('li', { cls: 'mine pending', testid: 'message' });
  li.dataset.pending = 'true';
  const meta = el('div', { cls: 'meta' });
  meta.append(el('span', { cls: 'from', text: state.user }), el('span', { text: 'sending…' }));
  li.append(meta, el('div', { cls: 'text', testid: 'message-text', text: p.body }));
  return li;
}

function renderTyping() {
  const users = [...(state.typing.get(state.open)?.keys() ?? [])];
  let text = '';
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = 'Several people are typing…';
  $('typing').textContent = text;
}

function renderConflict() {
  const c = state.conflict;
  const shown = !!c && c.conv === state.open;
  $('conflict').hidden = !shown;
  if (!shown) return;
  const deleted = c.current.body === null;
  $('conflict-what').textContent = deleted
    ? `This message was deleted (by ${c.current.from}) before your ${c.action} arrived.`
    : `This message was changed elsewhere (now revision ${c.current.rev}) before your ${c.action} arrived.`;
  $('conflict-mine').textContent = c.action === 'delete' ? '(delete the message)' : c.mine;
  $('conflict-theirs').textContent = deleted ? '(deleted)' : c.current.body;
  // A deleted message stays deleted: there is nothing left to keep.
  $('conflict-keep').disabled = deleted;
}

// ---- actions -----------------------------------------------------------------------

async function openConv(id) {
  const conv = ensureConv(id);
  if (state.open !== id) elementCache.clear();
  state.open = id;
  conv.unread = 0;
  $('messages').replaceChildren();
  render();
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
  refreshPresence();
  await fillViewport();
  list.scrollTop = list.scrollHeight;
  $('composer-input').focus();
}

// Loads older pages until the list can scroll (or the beginning is here).
async function fillViewport() {
  const list = $('messages');
  const id = state.open;
  for (;;) {
    const conv = state.convs.get(id);
    if (state.open !== id || !conv || conv.oldest <= 1) return;
    if (conv.items.size > 0 && list.scrollHeight > list.clientHeight) return;
    if (!(await loadOlder())) return;
  }
}

// One page of older events above what is loaded; true if it got one.
async function loadOlder() {
  const id = state.open;
  const conv = state.convs.get(id);
  if (!conv || conv.oldest <= 1 || state.loadingOlder || !state.connected) return false;
  state.loadingOlder = true;
  try {
    const frame = { type: 'history', conv: id, limit: PAGE_SIZE };
    if (conv.oldest !== Infinity) frame.before = conv.oldest;
    const page = await request(frame);
    conv.version = Math.max(conv.version, page.version);
    if (page.events.length === 0) { conv.oldest = 1; return false; }
    const list = $('messages');
    const fromBottom = list.scrollHeight - list.scrollTop;
    applyEvents(page.events);
    if (state.open === id) {
      renderConversation();
      if (frame.before !== undefined) list.scrollTop = list.scrollHeight - fromBottom; // keep the view still
      else list.scrollTop = list.scrollHeight;
    }
    return true;
  } catch (err) {
    if (isNodeError(err)) showStatus(`Could not load history: ${err.message}`);
    return false;
  } finally {
    state.loadingOlder = false;
  }
}

function newCmid() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return 'w' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function sendMessage(conv, body) {
  const cmid = newCmid();
  state.pending.set(cmid, { conv, body, acked: false });
  scheduleRender();
  transmit(cmid);
}

// Sends (or resends, with the same cmid) one pending message. A send that
// never got its ack stays pending and goes again after the next connect; the
// node answers a repeat with the original ack and appends nothing.
async function transmit(cmid) {
  const p = state.pending.get(cmid);
  if (!p || !state.connected) return;
  try {
    const ack = await request({ type: 'send', conv: p.conv, body: p.body, cmid });
    p.acked = true;
    // The event itself replaces the pending item; it may have come first.
    if (state.convs.get(ack.conv)?.items.has(ack.version)) state.pending.delete(cmid);
  } catch (err) {
    if (!isNodeError(err)) return;
    state.pending.delete(cmid);
    showStatus(`Not sent: ${err.message}`);
    scheduleRender();
  }
}

function startEdit(conv, target) {
  const item = state.convs.get(conv).items.get(target);
  // The edit is based on the revision on screen when editing starts.
  state.editing = { conv, target, rev: item.rev, draft: item.body, original: item.body };
  scheduleRender();
}

function cancelEdit() {
  state.editing = null;
  scheduleRender();
}

function saveEdit() {
  const e = state.editing;
  state.editing = null;
  scheduleRender();
  if (e.draft === e.original || e.draft.trim() === '') return;
  submitEdit(e.conv, e.target, e.rev, e.draft);
}

async function submitEdit(conv, target, rev, body) {
  try {
    await request({ type: 'edit', conv, target, rev, body });
    clearConflict(conv, target);
  } catch (err) {
    handleRevisionError(err, conv, target, 'edit', body);
  }
}

async function deleteMessage(conv, target, rev, body) {
  try {
    await request({ type: 'delete', conv, target, rev });
    clearConflict(conv, target);
  } catch (err) {
    handleRevisionError(err, conv, target, 'delete', body);
  }
}

function handleRevisionError(err, conv, target, action, mine) {
  if (isNodeError(err) && err.code === 'conflict' && err.current) {
    state.conflict = { conv, target, action, mine, current: err.current };
    scheduleRender();
  } else if (isNodeError(err)) {
    showStatus(`Could not ${action}: ${err.message}`);
  } else {
    showStatus(`Could not ${action}: not connected; try again once connected`);
  }
}

function clearConflict(conv, target) {
  const c = state.conflict;
  if (c && c.conv === conv && c.target === target) {
    state.conflict = null;
    scheduleRender();
  }
}

// "Keep mine": the same change again, now based on the current revision.
function keepMine() {
  const c = state.conflict;
  if (!c) return;
  if (c.action === 'edit') submitEdit(c.conv, c.target, c.current.rev, c.mine);
  else deleteMessage(c.conv, c.target, c.current.rev, c.mine);
}

// "Take theirs": drop the change; the current version is already on screen.
function takeTheirs() {
  state.conflict = null;
  scheduleRender();
}

async function refreshPresence() {
  if (!state.open || !state.connected) return;
  const users = state.convs.get(state.open).members.slice(0, 100);
  if (users.length === 0) return;
  try {
    const reply = await request({ type: 'presence', users });
    Object.assign(state.presence, reply.users);
    scheduleRender();
  } catch { /* the next refresh tries again */ }
}

function showTyping(conv, user) {
  if (user === state.user) return;
  if (!state.typing.has(conv)) state.typing.set(conv, new Map());
  const typers = state.typing.get(conv);
  clearTimeout(typers.get(user));
  typers.set(user, setTimeout(() => {
    typers.delete(user);
    if (conv === state.open) renderTyping();
  }, TYPING_SHOW_MS));
  if (conv === state.open) renderTyping();
}

function noteTyping() {
  const now = Date.now();
  if (!state.open || now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
  state.lastTypingSent = now;
  tell({ type: 'typing', conv: state.open });
}

// ---- wiring ------------------------------------------------------------------------

$('login-form').onsubmit = async (e) => {
  e.preventDefault();
  $('login-error').textContent = '';
  try {
    await signIn($('login-user').value.trim());
  } catch (err) {
    $('login-error').textContent = err.message;
  }
};

$('sign-out').onclick = () => signOut();

$('new-dm').onsubmit = async (e) => {
  e.preventDefault();
  const user = $('new-dm-user').value.trim();
  try {
    const created = await request({ type: 'dm', user });
    $('new-dm-user').value = '';
    await openConv(created.conv);
  } catch (err) {
    showStatus(`Could not open a conversation with ${user}: ${err.message}`);
  }
};

$('new-group').onsubmit = async (e) => {
  e.preventDefault();
  const members = $('new-group-members').value.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = members.find((m) => !USER_ID.test(m));
  if (bad !== undefined) { showStatus(`Not a user name: ${bad}`); return; }
  const title = $('new-group-title').value.trim();
  try {
    const created = await request({ type: 'create', members, ...(title ? { title } : {}) });
    $('new-group-members').value = '';
    $('new-group-title').value = '';
    await openConv(created.conv);
  } catch (err) {
    showStatus(`Could not create the group: ${err.message}`);
  }
};

$('composer').onsubmit = (e) => {
  e.preventDefault();
  const input = $('composer-input');
  const body = input.value;
  if (!body.trim() || !state.open) return;
  input.value = '';
  sendMessage(state.open, body);
};

$('composer-input').oninput = noteTyping;

$('messages').onscroll = () => {
  if ($('messages').scrollTop < 40) loadOlder();
};

$('conflict-keep').onclick = keepMine;
$('conflict-take').onclick = takeTheirs;

// The browser knows when the network is gone: say so, and come back at once
// when it returns instead of waiting out a backoff.
window.addEventListener('offline', () => {
  if (!state.token) return;
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  forgetConnection();
  showBanner('offline');
});
window.addEventListener('online', () => {
  if (!state.token) return;
  state.attempt = 0;
  connect();
});

(function boot() {
  const why = sessionStorage.getItem('tidings.signout');
  if (why) {
    sessionStorage.removeItem('tidings.signout');
    $('login-error').textContent = why;
  }
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null'); } catch { /* start over */ }
  if (saved && saved.user && saved.token) start(saved.user, saved.token);
  else $('login-user').focus();
})();
