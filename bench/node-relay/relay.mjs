// A plain Node.js relay for the voice protocol, written only for the
// benchmarks, which compare the latency and CPU of krt-relay with it in the
// same run. It does what a straightforward relay on the `ws` package does
// and no more. It checks token signatures and expiry (Ed25519, cached by
// token text) but not the issue time, clock skew or revocations. It lets
// clients join, leave and mute frequencies, and allows one talker per
// frequency at a time. It sends each audio frame to every other listener,
// but drops it for a listener whose socket already buffers more than
// MAX_BUFFERED bytes. It keeps no database and no log.
//
//   node relay.mjs --listen 127.0.0.1:0 --data-dir DIR [--addr-file FILE]
//
// DIR contains `signing.pub`, the public key of the key pair that the load
// generator signs tokens with.
// GET /server-status returns the frame counters as JSON.

import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const TOKEN_PREFIX = 'krt1.';
const MAX_TOKEN_LEN = 2048;
const MAX_MESSAGE = 64 * 1024;
const MAX_BUFFERED = 64 * 1024;
const FLOOR_TIMEOUT_MS = 300;
const HEADER_LEN = 8;
// A 64-byte Ed25519 signature in unpadded base64url.
const SIGNATURE_TEXT = /^[A-Za-z0-9_-]{86}$/;

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:7400' },
    'data-dir': { type: 'string', default: 'data' },
    'addr-file': { type: 'string' },
  },
});

const publicKey = createPublicKey({
  key: {
    kty: 'OKP',
    crv: 'Ed25519',
    x: Buffer.from(readFileSync(join(args['data-dir'], 'signing.pub'), 'utf8').trim(), 'base64')
      .toString('base64url'),
  },
  format: 'jwk',
});

const counters = { framesIn: 0, framesOut: 0, framesDropped: 0, framesDenied: 0, signatureChecks: 0 };

// Verified claims by token text, so a reconnecting client costs no signature check.
const tokenCache = new Map();

function checkToken(token) {
  if (typeof token !== 'string' || token.length === 0) return { error: 'missing token' };
  let claims = tokenCache.get(token);
  if (!claims) {
    if (token.length > MAX_TOKEN_LEN || !token.startsWith(TOKEN_PREFIX)) {
      return { error: 'malformed token' };
    }
    const dot = token.indexOf('.', TOKEN_PREFIX.length);
    if (dot < 0) return { error: 'malformed token: missing signature' };
    const signatureText = token.slice(dot + 1);
    // Buffer.from skips characters outside the alphabet, so check the text first.
    if (!SIGNATURE_TEXT.test(signatureText)) return { error: 'malformed token: signature is not base64url' };
    counters.signatureChecks += 1;
    const signed = Buffer.from(token.slice(0, dot));
    const signature = Buffer.from(signatureText, 'base64url');
    if (!verify(null, signed, publicKey, signature)) {
      return { error: 'bad signature' };
    }
    try {
      claims = JSON.parse(Buffer.from(token.slice(TOKEN_PREFIX.length, dot), 'base64url'));
    } catch {
      return { error: 'malformed token: claims are not JSON' };
    }
    tokenCache.set(token, claims);
  }
  if (claims.exp <= Date.now() / 1000) return { error: 'token expired' };
  return { claims };
}

function allows(claims, freqId) {
  return claims.freqs.some(([first, last]) => freqId >= first && freqId <= last);
}

// freqId -> { listeners: Set<Session>, key, talker: Session|null, lastFrame }
const freqs = new Map();

function sendJson(session, message) {
  session.ws.send(JSON.stringify(message));
}

function broadcastJson(freq, except, message) {
  const text = JSON.stringify(message);
  for (const listener of freq.listeners) {
    if (listener !== except) listener.ws.send(text);
  }
}

function rx(freq, freqId, talker, action) {
  broadcastJson(freq, talker, {
    type: 'rx',
    freqId,
    discordUserId: talker.claims.sub,
    username: talker.claims.name,
    action,
  });
}

function releaseFloor(freq, freqId) {
  if (freq.talker) rx(freq, freqId, freq.talker, 'stop');
  freq.talker = null;
}

function leave(session, freqId) {
  const freq = freqs.get(freqId);
  if (!freq || !freq.listeners.delete(session)) return;
  session.joined.delete(freqId);
  if (freq.talker === session) releaseFloor(freq, freqId);
  if (freq.listeners.size === 0) {
    freqs.delete(freqId);
  } else {
    broadcastJson(freq, null, { type: 'listener_update', freqId, listenerCount: freq.listeners.size });
  }
}

function onText(session, text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    sendJson(session, { type: 'error', reason: 'not JSON' });
    return;
  }
  if (message === null || typeof message !== 'object' || typeof message.type !== 'string') {
    sendJson(session, { type: 'error', reason: 'send a JSON object with a string "type" field' });
    return;
  }
  if (message.type === 'ping') {
    sendJson(session, { type: 'pong' });
    return;
  }
  if (message.type === 'auth') {
    const { claims, error } = checkToken(message.authToken);
    if (error) {
      sendJson(session, { type: 'auth_error', reason: error });
      return;
    }
    session.claims = claims;
    sendJson(session, { type: 'auth_ok', sessionToken: randomBytes(16).toString('hex'), displayName: claims.name });
    return;
  }
  if (!session.claims) {
    sendJson(session, { type: 'error', reason: 'send auth first' });
    return;
  }
  const freqId = message.freqId;
  const validFreq = Number.isInteger(freqId) && freqId >= 1000 && freqId <= 9999;
  switch (message.type) {
    case 'join': {
      if (!validFreq || !allows(session.claims, freqId)) {
        sendJson(session, { type: 'join_error', freqId, reason: 'not allowed' });
        return;
      }
      let freq = freqs.get(freqId);
      if (!freq) {
        freq = { listeners: new Set(), key: randomBytes(32).toString('base64'), talker: null, lastFrame: 0 };
        freqs.set(freqId, freq);
      }
      freq.listeners.add(session);
      session.joined.set(freqId, { muted: false });
      sendJson(session, { type: 'join_ok', freqId, listenerCount: freq.listeners.size, freqKey: freq.key });
      broadcastJson(freq, session, { type: 'listener_update', freqId, listenerCount: freq.listeners.size });
      return;
    }
    case 'leave':
      leave(session, freqId);
      sendJson(session, { type: 'leave_ok', freqId });
      return;
    case 'mute':
    case 'unmute': {
      const joined = session.joined.get(freqId);
      if (!joined) {
        sendJson(session, { type: 'mute_error', reason: 'not joined' });
        return;
      }
      joined.muted = message.type === 'mute';
      sendJson(session, { type: 'mute_ok', freqId, muted: joined.muted });
      return;
    }
    default:
      sendJson(session, { type: 'error', reason: `unknown type ${message.type}` });
  }
}

function onAudio(session, data) {
  if (!session.claims || data.length < HEADER_LEN) return;
  counters.framesIn += 1;
  const freqId = data.readUInt32BE(0);
  const freq = freqs.get(freqId);
  if (!freq || !session.joined.has(freqId)) {
    counters.framesDenied += 1;
    return;
  }
  const now = Date.now();
  if (freq.talker !== session) {
    const holder = freq.talker;
    const free = !holder || now - freq.lastFrame >= FLOOR_TIMEOUT_MS;
    if (!free && session.claims.rank <= holder.claims.rank) {
      counters.framesDenied += 1;
      if (now - session.lastDenied >= FLOOR_TIMEOUT_MS) {
        sendJson(session, { type: 'tx_denied', freqId, reason: 'busy' });
      }
      session.lastDenied = now;
      return;
    }
    releaseFloor(freq, freqId);
    freq.talker = session;
    rx(freq, freqId, session, 'start');
  }
  freq.lastFrame = now;
  for (const listener of freq.listeners) {
    if (listener === session || listener.joined.get(freqId).muted) continue;
    if (listener.ws.bufferedAmount > MAX_BUFFERED) {
      counters.framesDropped += 1;
      continue;
    }
    listener.ws.send(data, { binary: true });
    counters.framesOut += 1;
  }
}

// Ends transmissions that went silent.
setInterval(() => {
  const now = Date.now();
  for (const [freqId, freq] of freqs) {
    if (freq.talker && now - freq.lastFrame >= FLOOR_TIMEOUT_MS) releaseFloor(freq, freqId);
  }
}, 100).unref();

const server = createServer((request, response) => {
  if (request.url === '/server-status') {
    const body = JSON.stringify(counters);
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    response.end(body);
  } else {
    response.writeHead(404).end();
  }
});

const wss = new WebSocketServer({ server, path: '/voice', maxPayload: MAX_MESSAGE, perMessageDeflate: false });
wss.on('connection', (ws) => {
  const session = { ws, claims: null, joined: new Map(), lastDenied: 0 };
  ws.on('message', (data, isBinary) => {
    // One bad message must not stop the relay for everyone.
    try {
      if (isBinary) onAudio(session, data);
      else onText(session, data.toString());
    } catch (error) {
      console.error(`message handling failed: ${error}`);
      ws.close(1011, 'internal error');
    }
  });
  ws.on('close', () => {
    for (const freqId of [...session.joined.keys()]) leave(session, freqId);
  });
  ws.on('error', () => {});
});

const separator = args.listen.lastIndexOf(':');
server.listen(Number(args.listen.slice(separator + 1)), args.listen.slice(0, separator), () => {
  const { address, port } = server.address();
  const text = `${address}:${port}`;
  if (args['addr-file']) writeFileSync(args['addr-file'], `${text}\n`);
  console.log(`listening on ${text}`);
});

process.on('SIGTERM', () => process.exit(0));
