// Tidings web chat. Plain JavaScript, no build step. All user text is
// rendered with textContent, never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  token: null,
  ws: null,
  connected: false,
  attempt: 0,
  nextReq: 1,
  requests: new Map(),        // req -> {resolve, reject}
  convs: new Map(),           // conv -> {title, members, version, messages: Map, oldest, unread}
  seen: {},                   // conv -> last version applied (for sync)
  notificationsSeen: 0,
  notifications: [],
  pending: new Map(),         // cmid -> {conv, body}: sent, not yet acknowledged
  open: null,                 // the conversation on screen
  presence: {},
  lastTypingSent: 0,
  typingTimers: new Map(),
  conflict: null,
};

// ---- connection -----------------------------------------------------------

function banner(text, ok) {
  const b = $('banner');
  b.hidden = !text;
  b.textContent = text || '';
  b.className = ok ? 'banner ok' : 'banner';
  b.dataset.state = ok ? 'connected' : (text || '').split(' ')[0].toLowerCase();
}

function backoff(attempt) {
  const ceiling = Math.min(15000, 500 * 2 ** attempt);
  return Math.random() * ceiling; // full jitter
}

function connect() {
  banner('Connecting…');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  ws.onopen = async () => {
    state.connected = true;
    state.attempt = 0;
    banner('Connected', true);
    setTimeout(() => { if (state.connected) banner(''); }, 1500);
    try {
      await resume();
    } catch (err) {
      console.warn('resume failed', err);
    }
  };
  ws.onmessage = (msg) => onFrame(JSON.parse(msg.data));
  ws.onclose = (ev) => {
    state.connected = false;
    for (const { reject } of state.requests.values()) reject(new Error('disconnected'));
    state.requests.clear();
    if (ev.code === 1008 || state.token === null) return;
    const delay = backoff(state.attempt++);
    let left = Math.ceil(delay / 1000);
    banner(`Reconnecting in ${left}s…`);
    const tick = setInterval(() => {
      left -= 1;
      if (left > 0) banner(`Reconnecting in ${left}s…`);
    }, 1000);
    setTimeout(() => { clearInterval(tick); connect(); }, delay);
  };
  ws.onerror = () => {};
}

function request(frame) {
  return new Promise((resolve, reject) => {
    if (!state.connected) { reject(new Error('offline')); return; }
    const req = `w${state.nextReq++}`;
    state.requests.set(req, { resolve, reject });
    state.ws.send(JSON.stringify({ ...frame, req }));
  });
}

function onFrame(frame) {
  if (frame.req && state.requests.has(frame.req)) {
    const { resolve, reject } = state.requests.get(frame.req);
    state.requests.delete(frame.req);
    if (frame.type === 'error') reject(frame); else resolve(frame);
    return;
  }
  switch (frame.type) {
    case 'event': applyEvent(frame); break;
    case 'notification': applyNotification(frame); break;
    case 'typing': showTyping(frame); break;
    case 'error': console.warn('error from the node', frame); break;
  }
}

// After every (re)connect: fetch what was missed, then resend what was not acknowledged.
async function resume() {
  const synced = await request({ type: 'sync', convs: state.seen, notifications: state.notificationsSeen });
  for (const c of synced.convs) {
    const conv = ensureConv(c.conv, c);
    conv.title = c.title; conv.members = c.members;
    for (const ev of c.events) applyEvent(ev);
    let more = c.more && state.seen[c.conv] !== undefined;
    while (more) {
      const page = await request({ type: 'history', conv: c.conv, after: state.seen[c.conv], limit: 200 });
      page.events.forEach(applyEvent);
      more = page.events.length > 0 && state.seen[c.conv] < page.version;
    }
  }
  synced.notifications.events.forEach(applyNotification);
  renderConvList();
  if (state.open) renderConversation();
  for (const [cmid, p] of state.pending) sendMessage(p.conv, p.body, cmid);
  refreshPresence();
}

// ---- state ----------------------------------------------------------------

function ensureConv(id, info) {
  if (!state.convs.has(id)) {
    state.convs.set(id, {
      title: info?.title ?? null, members: info?.members ?? [], version: 0,
      messages: new Map(), oldest: Infinity, unread: 0,
    });
  }
  return state.convs.get(id);
}

function applyEvent(ev) {
  const conv = ensureConv(ev.conv);
  if (conv.messages.has(ev.version)) return; // already applied
  conv.version = Math.max(conv.version, ev.version);
  conv.oldest = Math.min(conv.oldest, ev.version);
  if ((state.seen[ev.conv] ?? 0) < ev.version) state.seen[ev.conv] = ev.version;
  const item = { version: ev.version, from: ev.from, kind: ev.kind, ts: ev.ts };
  switch (ev.kind) {
    case 'created': conv.title = ev.title; conv.members = ev.members; item.text = `${ev.from} created the conversation`; break;
    case 'join': conv.members = [...new Set([...conv.members, ...ev.users])]; item.text = `${ev.users.join(', ')} joined`; break;
    case 'leave': conv.members = conv.members.filter((m) => !ev.users.includes(m)); item.text = `${ev.users.join(', ')} left`; break;
    case 'message': {
      item.body = ev.body; item.rev = 1; item.deleted = false;
      if (ev.cmid && state.pending.has(ev.cmid)) state.pending.delete(ev.cmid);
      // An edit or delete that came before the message (history pages) is applied on top.
      const later = conv.messages.get(`r${ev.version}`);
      if (later) Object.assign(item, later);
      break;
    }
    case 'edit':
    case 'delete': {
      const target = conv.messages.get(ev.target);
      const change = ev.kind === 'edit' ? { body: ev.body, rev: ev.rev } : { deleted: true, rev: ev.rev };
      if (target) {
        if (ev.rev > target.rev) Object.assign(target, change);
      } else {
        conv.messages.set(`r${ev.target}`, change);
      }
      item.hidden = true;
      break;
    }
  }
  conv.messages.set(ev.version, item);
  if (ev.conv !== state.open && ev.kind === 'message' && ev.from !== state.user) conv.unread += 1;
  renderConvList();
  if (ev.conv === state.open) renderConversation();
}

function applyNotification(n) {
  if (n.version <= state.notificationsSeen) return;
  state.notificationsSeen = n.version;
  state.notifications.push(n);
  $('notification-count').textContent = String(state.notifications.length);
  const li = document.createElement('li');
  li.dataset.testid = 'notification';
  li.textContent = JSON.stringify(n.payload);
  $('notification-list').appendChild(li);
}

// ---- rendering ------------------------------------------------------------

function convName(id, conv) {
  if (conv.title) return conv.title;
  if (id.startsWith('dm:')) return id.slice(3).split(':').find((u) => u !== state.user) ?? state.user;
  return conv.members.filter((m) => m !== state.user).join(', ') || id;
}

function renderConvList() {
  const list = $('conv-list');
  list.replaceChildren();
  const ids = [...state.convs.keys()].sort();
  for (const id of ids) {
    const conv = state.convs.get(id);
    const li = document.createElement('li');
    li.dataset.testid = 'conv-item';
    li.dataset.conv = id;
    li.textContent = convName(id, conv);
    if (id === state.open) li.classList.add('active');
    if (conv.unread) { li.classList.add('unread'); li.textContent += ` (${conv.unread})`; }
    li.onclick = () => openConv(id);
    list.appendChild(li);
  }
}

function renderConversation() {
  const id = state.open;
  const conv = state.convs.get(id);
  $('conv-title').textContent = convName(id, conv);
  const members = $('members');
  members.replaceChildren();
  for (const m of conv.members) {
    const li = document.createElement('li');
    const dot = document.createElement('span');
    dot.className = state.presence[m]?.online ? 'dot online' : 'dot';
    dot.dataset.testid = 'presence';
    dot.dataset.user = m;
    dot.dataset.online = String(!!state.presence[m]?.online);
    li.append(dot, document.createTextNode(m));
    members.appendChild(li);
  }
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren();
  const versions = [...conv.messages.keys()].filter((k) => typeof k === 'number').sort((a, b) => a - b);
  for (const v of versions) {
    const m = conv.messages.get(v);
    if (m.hidden) continue;
    const li = document.createElement('li');
    li.dataset.version = String(v);
    if (m.kind !== 'message') {
      li.className = 'system';
      li.textContent = m.text;
      list.appendChild(li);
      continue;
    }
    li.dataset.testid = 'message';
    if (m.from === state.user) li.classList.add('mine');
    const from = document.createElement('div');
    from.className = 'from';
    from.textContent = m.from;
    const text = document.createElement('div');
    text.dataset.testid = 'message-text';
    if (m.deleted) { text.className = 'deleted'; text.textContent = 'message deleted'; }
    else text.textContent = m.body;
    li.append(from, text);
    if (m.rev > 1 && !m.deleted) {
      const edited = document.createElement('span');
      edited.className = 'edited';
      edited.textContent = '(edited)';
      from.appendChild(edited);
    }
    if (m.from === state.user && !m.deleted) {
      const actions = document.createElement('div');
      actions.className = 'actions';
      const edit = document.createElement('button');
      edit.textContent = 'edit';
      edit.dataset.testid = 'edit';
      edit.onclick = () => startEdit(id, v);
      const del = document.createElement('button');
      del.textContent = 'delete';
      del.dataset.testid = 'delete';
      del.onclick = () => deleteMessage(id, v, m.rev);
      actions.append(edit, del);
      li.appendChild(actions);
    }
    list.appendChild(li);
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// ---- actions --------------------------------------------------------------

async function openConv(id) {
  state.open = id;
  const conv = ensureConv(id);
  conv.unread = 0;
  $('composer-input').disabled = false;
  $('composer-send').disabled = false;
  $('conflict').hidden = true;
  $('typing').textContent = '';
  renderConvList();
  renderConversation();
  if (conv.messages.size === 0 || conv.oldest > 1) await loadOlder();
  refreshPresence();
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

async function loadOlder() {
  const id = state.open;
  const conv = state.convs.get(id);
  if (!conv || conv.oldest <= 1 || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const frame = { type: 'history', conv: id, limit: 50 };
    if (conv.oldest !== Infinity) frame.before = conv.oldest;
    const page = await request(frame);
    page.events.forEach(applyEvent);
    if (page.events.length === 0) conv.oldest = 1;
  } catch (err) {
    console.warn('history failed', err);
  } finally {
    state.loadingOlder = false;
  }
}

function newCmid() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function sendMessage(conv, body, cmid) {
  state.pending.set(cmid, { conv, body });
  try {
    await request({ type: 'send', conv, body, cmid });
    state.pending.delete(cmid);
  } catch (err) {
    if (err && err.type === 'error') {
      state.pending.delete(cmid);
      alert(`Not sent: ${err.message}`);
    }
    // Disconnected: it stays pending and is resent after reconnecting.
  }
}

async function startEdit(id, version) {
  const m = state.convs.get(id).messages.get(version);
  // The edit is based on the revision the person saw when they started.
  const rev = m.rev;
  const body = prompt('Edit message', m.body);
  if (body === null || body === m.body) return;
  await submitEdit(id, version, rev, body);
}

async function submitEdit(conv, target, rev, body) {
  try {
    await request({ type: 'edit', conv, target, rev, body });
    $('conflict').hidden = true;
    state.conflict = null;
  } catch (err) {
    if (err && err.code === 'conflict' && err.current) showConflict(conv, target, body, err.current);
    else if (err && err.message) alert(`Not edited: ${err.message}`);
  }
}

function showConflict(conv, target, mine, current) {
  state.conflict = { conv, target, mine, current };
  $('conflict-mine').textContent = mine;
  $('conflict-theirs').textContent = current.body === null ? '(deleted)' : current.body;
  $('conflict-keep').disabled = current.body === null;
  $('conflict').hidden = false;
}

async function deleteMessage(conv, target, rev) {
  try {
    await request({ type: 'delete', conv, target, rev });
  } catch (err) {
    if (err && err.code === 'conflict' && err.current) showConflict(conv, target, '(delete)', err.current);
  }
}

async function refreshPresence() {
  if (!state.open || !state.connected) return;
  const members = state.convs.get(state.open).members.slice(0, 100);
  if (members.length === 0) return;
  try {
    const reply = await request({ type: 'presence', users: members });
    Object.assign(state.presence, reply.users);
    renderConversation();
  } catch (_) { /* offline: next refresh */ }
}

function showTyping(frame) {
  if (frame.conv !== state.open) return;
  const el = $('typing');
  el.textContent = `${frame.user} is typing…`;
  clearTimeout(state.typingTimers.get(frame.user));
  state.typingTimers.set(frame.user, setTimeout(() => {
    if (el.textContent.startsWith(frame.user)) el.textContent = '';
  }, 3000));
}

// ---- wiring ---------------------------------------------------------------

async function signIn(user) {
  const res = await fetch('/v1/dev/token', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error?.message ?? `sign-in failed (${res.status})`);
  sessionStorage.setItem('tidings', JSON.stringify({ user, token: body.token }));
  start(user, body.token);
}

function start(user, token) {
  state.user = user;
  state.token = token;
  $('me').textContent = user;
  $('login').hidden = true;
  $('app').hidden = false;
  connect();
  setInterval(refreshPresence, 10000);
}

$('login-form').onsubmit = async (e) => {
  e.preventDefault();
  try { await signIn($('login-user').value.trim()); }
  catch (err) { $('login-error').textContent = err.message; }
};

$('new-dm').onsubmit = async (e) => {
  e.preventDefault();
  try {
    const created = await request({ type: 'dm', user: $('new-dm-user').value.trim() });
    $('new-dm-user').value = '';
    await openConv(created.conv);
  } catch (err) { alert(err.message ?? err); }
};

$('new-group').onsubmit = async (e) => {
  e.preventDefault();
  const members = $('new-group-members').value.split(',').map((s) => s.trim()).filter(Boolean);
  const title = $('new-group-title').value.trim();
  try {
    const created = await request({ type: 'create', members, ...(title ? { title } : {}) });
    $('new-group-members').value = '';
    $('new-group-title').value = '';
    await openConv(created.conv);
  } catch (err) { alert(err.message ?? err); }
};

$('composer').onsubmit = (e) => {
  e.preventDefault();
  const input = $('composer-input');
  const body = input.value;
  if (!body.trim() || !state.open) return;
  input.value = '';
  sendMessage(state.open, body, newCmid());
};

$('composer-input').oninput = () => {
  const now = Date.now();
  if (state.open && state.connected && now - state.lastTypingSent > 2000) {
    state.lastTypingSent = now;
    state.ws.send(JSON.stringify({ type: 'typing', conv: state.open }));
  }
};

$('messages').onscroll = () => { if ($('messages').scrollTop < 20) loadOlder(); };

$('conflict-keep').onclick = () => {
  const c = state.conflict;
  if (c) submitEdit(c.conv, c.target, c.current.rev, c.mine);
};
$('conflict-take').onclick = () => { $('conflict').hidden = true; state.conflict = null; };

const saved = JSON.parse(sessionStorage.getItem('tidings') || 'null');
if (saved) start(saved.user, saved.token);
