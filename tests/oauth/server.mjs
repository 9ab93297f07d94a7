// A real OAuth2 authorization server (oidc-provider, client credentials) for the tests.
//
//   node tests/oauth/server.mjs [--port N] [--config PATH] [--ready-file PATH]
//
// Port: --port, else OAUTH_PORT, else 0 (the OS picks one). Always binds 127.0.0.1.
// Config: --config PATH, else OAUTH_CONFIG (a path), else OAUTH_CONFIG_JSON (inline);
// see config.mjs for its shape. The issuer is http://127.0.0.1:PORT and the token
// endpoint is ISSUER/token. /_control/* (see control.mjs) is answered before the
// request reaches oidc-provider.
//
// Once listening it prints one JSON line {"port", "issuer", "token_endpoint", "pid"} to
// stdout and, with --ready-file, writes the same JSON to that file (atomically: write
// then rename) so a launcher can wait for it. SIGTERM or SIGINT exits at once.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { parseArgs } from 'node:util';

import { loadConfig } from './config.mjs';
import { ControlState } from './control.mjs';
import { buildProvider } from './provider.mjs';

const HOST = '127.0.0.1';
const TOKEN_PATH = '/token';

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port }, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

async function main() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      config: { type: 'string' },
      'ready-file': { type: 'string' },
    },
  });
  const port = Number.parseInt(values.port ?? process.env.OAUTH_PORT ?? '0', 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error('port must be 0-65535');
  const config = loadConfig(values.config ?? process.env.OAUTH_CONFIG, process.env.OAUTH_CONFIG_JSON);

  const control = new ControlState();
  let providerCallback = null;
  const handler = (req, res) => {
    if (req.url.startsWith('/_control/')) {
      control.handleControl(req, res).catch((err) => {
        res.destroy(err);
      });
      return;
    }
    if (providerCallback === null) {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
      res.end('{"error":"temporarily_unavailable","error_description":"starting"}');
      return;
    }
    providerCallback(req, res);
  };
  // With tls: https, asking every client for a certificate but admitting those without one or
  // with one from another CA (self-signed client auth); oidc-provider's mTLS hooks judge it.
  const server = config.tls
    ? createTlsServer(
      {
        cert: readFileSync(config.tls.cert),
        key: readFileSync(config.tls.key),
        ca: readFileSync(config.tls.ca),
        requestCert: true,
        rejectUnauthorized: false,
      },
      handler,
    )
    : createServer(handler);

  // The issuer names the real port, which is only known once listening (port 0).
  const actualPort = await listen(server, port);
  const issuer = `${config.tls ? 'https' : 'http'}://${HOST}:${actualPort}`;
  const provider = buildProvider(issuer, config);
  control.provider = provider;
  provider.use(control.tokenMiddleware(TOKEN_PATH));
  providerCallback = provider.callback();

  const ready = JSON.stringify({
    port: actualPort,
    issuer,
    token_endpoint: `${issuer}${TOKEN_PATH}`,
    pid: process.pid,
  });
  if (values['ready-file']) {
    const tmp = `${values['ready-file']}.tmp`;
    writeFileSync(tmp, ready);
    renameSync(tmp, values['ready-file']);
  }
  process.stdout.write(`${ready}\n`);
}

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}

main().catch((err) => {
  process.stderr.write(`oauth test server failed to start: ${err.message}\n`);
  process.exit(1);
});
