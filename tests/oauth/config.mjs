// Reads and checks the harness configuration (clients, token lifetime, audience).
//
// The configuration is JSON, from a file (--config PATH or OAUTH_CONFIG) or inline
// (OAUTH_CONFIG_JSON). Shape:
//
//   {
//     "clients": [
//       {"client_id": "svc-a", "client_secret": "…", "scopes": ["read"],
//        "auth_method": "client_secret_basic" | "client_secret_post" | "client_secret_jwt"
//                     | "private_key_jwt" | "tls_client_auth" | "self_signed_tls_client_auth",
//        "jwks": {"keys": [...]},           // public keys: private_key_jwt, self_signed_tls_client_auth
//        "tls_client_auth_san_dns": "…",    // the certificate's DNS name: tls_client_auth
//        "certificate_bound": false}        // RFC 8705 certificate-bound access tokens
//     ],
//     "tls": {"cert": PATH, "key": PATH, "ca": PATH},  // optional: serve https, ask for client
//                                                      // certificates, trust client certs from ca
//     "token_ttl": 3600,                 // seconds; becomes expires_in
//     "audience": "https://api.test",    // optional resource indicator (RFC 8707)
//     "access_token_format": "opaque",   // or "jwt"; applies when an audience is set
//     "enforce_auth_method": true        // false: basic and post both accepted (oidc-provider's own rule)
//   }
//
// Errors name the offending field but never echo a value: the file carries secrets.
import { readFileSync } from 'node:fs';

const AUTH_METHODS = new Set([
  'client_secret_basic',
  'client_secret_post',
  'client_secret_jwt',
  'private_key_jwt',
  'tls_client_auth',
  'self_signed_tls_client_auth',
]);
const SECRET_METHODS = new Set(['client_secret_basic', 'client_secret_post', 'client_secret_jwt']);
const JWKS_METHODS = new Set(['private_key_jwt', 'self_signed_tls_client_auth']);
const FORMATS = new Set(['opaque', 'jwt']);

function fail(message) {
  throw new Error(`invalid OAuth harness config: ${message}`);
}

function checkClient(raw, index) {
  const where = `clients[${index}]`;
  if (raw === null || typeof raw !== 'object') fail(`${where} must be an object`);
  const { client_id: clientId, client_secret: secret } = raw;
  if (typeof clientId !== 'string' || clientId === '') fail(`${where}.client_id must be a non-empty string`);
  const authMethod = raw.auth_method ?? 'client_secret_basic';
  if (!AUTH_METHODS.has(authMethod)) fail(`${where}.auth_method must be one of ${[...AUTH_METHODS].join(', ')}`);
  if (SECRET_METHODS.has(authMethod) && (typeof secret !== 'string' || secret === '')) {
    fail(`${where}.client_secret must be a non-empty string`);
  }
  const jwks = raw.jwks ?? null;
  if (JWKS_METHODS.has(authMethod) && (jwks === null || !Array.isArray(jwks.keys))) {
    fail(`${where}.jwks must be {"keys": [...]} for ${authMethod}`);
  }
  const sanDns = raw.tls_client_auth_san_dns ?? null;
  if (authMethod === 'tls_client_auth' && (typeof sanDns !== 'string' || sanDns === '')) {
    fail(`${where}.tls_client_auth_san_dns must be a non-empty string for tls_client_auth`);
  }
  const certificateBound = raw.certificate_bound ?? false;
  if (typeof certificateBound !== 'boolean') fail(`${where}.certificate_bound must be a boolean`);
  const scopes = raw.scopes ?? [];
  if (!Array.isArray(scopes) || !scopes.every((s) => typeof s === 'string' && /^[\x21\x23-\x5b\x5d-\x7e]+$/.test(s))) {
    fail(`${where}.scopes must be a list of scope tokens`);
  }
  return { clientId, secret: secret || undefined, scopes, authMethod, jwks, sanDns, certificateBound };
}

/** Turns parsed JSON into the harness settings, or throws naming the bad field. */
export function parseConfig(raw) {
  if (raw === null || typeof raw !== 'object') fail('top level must be an object');
  if (!Array.isArray(raw.clients)) fail('clients must be a list');
  const clients = raw.clients.map(checkClient);
  const ids = new Set(clients.map((c) => c.clientId));
  if (ids.size !== clients.length) fail('client_id values must be unique');

  const tokenTTL = raw.token_ttl ?? 3600;
  if (!Number.isInteger(tokenTTL) || tokenTTL <= 0) fail('token_ttl must be a positive integer');

  const audience = raw.audience ?? null;
  if (audience !== null && (typeof audience !== 'string' || !URL.canParse(audience))) {
    fail('audience must be an absolute URI');
  }
  const format = raw.access_token_format ?? 'opaque';
  if (!FORMATS.has(format)) fail('access_token_format must be "opaque" or "jwt"');

  const enforceAuthMethod = raw.enforce_auth_method ?? true;
  if (typeof enforceAuthMethod !== 'boolean') fail('enforce_auth_method must be a boolean');

  const tls = raw.tls ?? null;
  if (tls !== null && !['cert', 'key', 'ca'].every((k) => typeof tls[k] === 'string' && tls[k] !== '')) {
    fail('tls must be {"cert": PATH, "key": PATH, "ca": PATH}');
  }

  return { clients, tokenTTL, audience, format, enforceAuthMethod, tls };
}

/** Loads the configuration from a file path, or inline JSON when no path is given. */
export function loadConfig(path, inline) {
  let text;
  if (path) {
    text = readFileSync(path, 'utf8');
  } else if (inline) {
    text = inline;
  } else {
    fail('give --config PATH, OAUTH_CONFIG or OAUTH_CONFIG_JSON');
  }
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    fail('not valid JSON');
  }
  return parseConfig(parsed);
}
