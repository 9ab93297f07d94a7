// Test control of the authorization server: token-request counters, injected faults,
// and the small HTTP API under /_control/ that exposes both.
//
// Theory of operation: every POST to the token endpoint passes through tokenMiddleware
// (registered with provider.use, so it runs before oidc-provider's own routing). It
// counts the request on arrival, under the client id the request claims (Basic header
// or client_id form field), then either hands it to oidc-provider or, while a fault is
// armed, answers it itself. Counters never see secrets: only client ids are kept.
//
// Stats JSON (GET /_control/stats):
//   token_requests     every token request that arrived, faulted ones included
//   by_client          the same, per claimed client id
//   issued             requests oidc-provider answered with 200 (a token)
//   issued_by_client
//   rejected           requests oidc-provider answered with an error (401, 400, …)
//   faulted            requests answered by an injected fault, not by oidc-provider
//   faulted_by_client
//   in_flight          token requests that arrived and have not been answered yet
//
// Routes: GET /_control/health, GET /_control/stats, GET /_control/fault,
// POST /_control/reset (counters to zero, fault cleared), POST /_control/fault with
//   {"mode": "none" | "status" | "reset", "status": 400-599 (default 503),
//    "retry_after": seconds, "delay_ms": 0-120000, "count": N}
// "status" answers with an OAuth2 JSON error body (and Retry-After when given); "reset"
// closes the connection unanswered; delay_ms applies first, whatever the mode, so
// {"mode": "none", "delay_ms": N} is a slow but successful server. With count the fault
// applies to the next N token requests only. Faulted requests still count in
// token_requests, and in faulted.
import { setTimeout as sleep } from 'node:timers/promises';

const BODY_LIMIT = 64 * 1024;
const MAX_DELAY_MS = 120_000;
const NO_CLIENT = '(none)';

function emptyCounters() {
  return {
    token_requests: 0,
    by_client: {},
    issued: 0,
    issued_by_client: {},
    rejected: 0,
    faulted: 0,
    faulted_by_client: {},
  };
}

const NO_FAULT = Object.freeze({ mode: 'none', status: null, retry_after: null, delay_ms: 0, count: null, body: null });

function bump(map, key) {
  map[key] = (map[key] ?? 0) + 1;
}

/** Parses and checks a fault request; throws a message naming the bad field. */
export function parseFault(raw) {
  if (raw === null || typeof raw !== 'object') throw new Error('body must be a JSON object');
  const mode = raw.mode ?? 'none';
  if (!['none', 'status', 'reset', 'body'].includes(mode)) throw new Error('mode must be "none", "status", "reset" or "body"');
  const body = raw.body ?? null;
  if (mode === 'body' && (body === null || typeof body !== 'object')) throw new Error('body must be a JSON object');
  const status = raw.status ?? (mode === 'status' ? 503 : null);
  if (mode === 'status' && !(Number.isInteger(status) && status >= 400 && status <= 599)) {
    throw new Error('status must be an integer 400-599');
  }
  const retryAfter = raw.retry_after ?? null;
  if (retryAfter !== null && !(Number.isInteger(retryAfter) && retryAfter >= 0)) {
    throw new Error('retry_after must be a non-negative integer (seconds)');
  }
  const delayMs = raw.delay_ms ?? 0;
  if (!(Number.isInteger(delayMs) && delayMs >= 0 && delayMs <= MAX_DELAY_MS)) {
    throw new Error(`delay_ms must be an integer 0-${MAX_DELAY_MS}`);
  }
  const count = raw.count ?? null;
  if (count !== null && !(Number.isInteger(count) && count > 0)) {
    throw new Error('count must be a positive integer (requests the fault applies to)');
  }
  return {
    mode, status: mode === 'status' ? status : null, retry_after: retryAfter, delay_ms: delayMs, count,
    body: mode === 'body' ? body : null,
  };
}

// The error code an OAuth2 client would see from a real server in that state.
function errorBody(status) {
  if (status === 429) return { error: 'temporarily_unavailable', error_description: 'rate limited (injected fault)' };
  if (status === 503) return { error: 'temporarily_unavailable', error_description: 'service unavailable (injected fault)' };
  if (status >= 500) return { error: 'server_error', error_description: 'server error (injected fault)' };
  return { error: 'invalid_request', error_description: 'request rejected (injected fault)' };
}

function basicClientId(header) {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!match) return null;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return null;
  try {
    // RFC 6749 §2.3.1: the id is form-urlencoded before it is put in the header.
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
  } catch {
    return null;
  }
}

// The sub of a client_assertion JWT (client_secret_jwt, private_key_jwt): the claimed client.
function assertionSubject(assertion) {
  if (typeof assertion !== 'string') return null;
  try {
    const payload = JSON.parse(Buffer.from(assertion.split('.')[1] ?? '', 'base64url').toString('utf8'));
    return typeof payload.sub === 'string' ? payload.sub : null;
  } catch {
    return null;
  }
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** Counters and the armed fault of one server process. */
export class ControlState {
  constructor() {
    this.counters = emptyCounters();
    // Kept apart from counters: a reset must not lose requests still pending.
    this.inFlight = 0;
    this.fault = NO_FAULT;
    this.provider = null; // set once built: token-info reads issued tokens from it
  }

  reset() {
    // A request pending across a reset finishes into the old counters, so after a
    // reset issued + rejected + faulted never exceeds token_requests.
    this.counters = emptyCounters();
    this.fault = NO_FAULT;
  }

  stats() {
    return { ...this.counters, in_flight: this.inFlight };
  }

  setFault(fault) {
    this.fault = fault.mode === 'none' && fault.delay_ms === 0 ? NO_FAULT : fault;
  }

  // The fault that applies to the request arriving now; a counted fault disarms itself.
  takeFault() {
    const fault = this.fault;
    if (fault.count !== null) {
      this.fault = fault.count > 1 ? { ...fault, count: fault.count - 1 } : NO_FAULT;
    }
    return fault;
  }

  /** A Koa middleware for provider.use() that counts and faults the token endpoint. */
  tokenMiddleware(tokenPath) {
    return async (ctx, next) => {
      if (ctx.method !== 'POST' || ctx.path !== tokenPath) return next();

      // Read the form body here so the claimed client id is known on arrival (tests
      // poll in_flight / token_requests while a slow request is pending). oidc-provider
      // takes a body parsed upstream from req.body.
      let clientId = basicClientId(ctx.get('authorization'));
      if (ctx.is('application/x-www-form-urlencoded')) {
        const body = await readBody(ctx.req);
        ctx.req.body = body;
        const form = new URLSearchParams(body.toString('utf8'));
        clientId ??= form.get('client_id') ?? assertionSubject(form.get('client_assertion'));
      }
      clientId = clientId || NO_CLIENT;

      const counters = this.counters;
      counters.token_requests += 1;
      bump(counters.by_client, clientId);
      this.inFlight += 1;
      try {
        const fault = this.takeFault();
        if (fault.delay_ms > 0) await sleep(fault.delay_ms);
        if (fault.mode === 'none') {
          await next();
          if (ctx.status === 200) {
            counters.issued += 1;
            bump(counters.issued_by_client, clientId);
          } else {
            counters.rejected += 1;
          }
          return;
        }
        counters.faulted += 1;
        bump(counters.faulted_by_client, clientId);
        if (fault.mode === 'reset') {
          ctx.respond = false;
          ctx.req.socket.destroy();
          return;
        }
        if (fault.mode === 'body') {
          // A 200 with a body the test wrote: token responses a real server might get wrong.
          ctx.status = 200;
          ctx.set('Cache-Control', 'no-store');
          ctx.body = fault.body;
          return;
        }
        ctx.status = fault.status;
        ctx.set('Cache-Control', 'no-store');
        if (fault.retry_after !== null) ctx.set('Retry-After', String(fault.retry_after));
        ctx.body = errorBody(fault.status);
      } finally {
        this.inFlight -= 1;
      }
    };
  }

  /** Answers /_control/* on a plain node http request; returns false for other paths. */
  async handleControl(req, res) {
    const url = new URL(req.url, 'http://control');
    const send = (status, body) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(text);
    };
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /_control/health') return send(200, { ok: true });
    if (route === 'GET /_control/stats') return send(200, this.stats());
    if (route === 'GET /_control/fault') return send(200, this.fault);
    if (route === 'POST /_control/token-info') {
      // What the server recorded for an issued token: its client and certificate binding.
      const { token } = JSON.parse((await readBody(req)).toString('utf8') || '{}');
      const found = typeof token === 'string' && this.provider
        ? await this.provider.ClientCredentials.find(token)
        : undefined;
      if (!found) return send(404, { error: 'not_found', error_description: 'unknown token' });
      return send(200, {
        client_id: found.clientId,
        scope: found.scope ?? null,
        'x5t#S256': found['x5t#S256'] ?? null,
      });
    }
    if (route === 'POST /_control/reset') {
      this.reset();
      return send(200, this.stats());
    }
    if (route === 'POST /_control/fault') {
      try {
        const fault = parseFault(JSON.parse((await readBody(req)).toString('utf8') || '{}'));
        this.setFault(fault);
        return send(200, this.fault);
      } catch (err) {
        return send(400, { error: 'invalid_request', error_description: err.message });
      }
    }
    return send(404, { error: 'not_found', error_description: `no control route ${route}` });
  }
}
