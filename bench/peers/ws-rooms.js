// What a team would write instead: a Node.js room broadcast server on `ws`.
// Same protocol as the bench's baseline server: {"type":"join","room":R},
// then {"type":"pub","room":R,...} frames go as they are to every member of R.
'use strict';
const { WebSocketServer } = require('ws');

const rooms = new Map();
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 }, () => {
  console.log(`listening on http://127.0.0.1:${wss.address().port}`);
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if (frame.type === 'join') {
      if (!rooms.has(frame.room)) rooms.set(frame.room, new Set());
      rooms.get(frame.room).add(ws);
      ws.on('close', () => rooms.get(frame.room).delete(ws));
    } else if (frame.type === 'pub') {
      for (const member of rooms.get(frame.room) ?? []) member.send(text);
    }
  });
});
process.on('SIGTERM', () => process.exit(0));
