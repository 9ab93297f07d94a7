// Builds the oidc-provider instance: a client-credentials-only authorization server.
//
// What oidc-provider enforces by itself: the client id and secret (401 invalid_client),
// the grant type, and expires_in from ttl.ClientCredentials.
//
// What this module adds through oidc-provider's documented hooks, because oidc-provider
// is more lenient than the servers our users meet:
// - it drops a requested scope it has never heard of and issues the token anyway; a
//   real AS answers invalid_scope;
// - it accepts client_secret_basic and client_secret_post interchangeably; many real
//   servers accept only the registered method, and the plugin must send that one.
// The resource-indicator hooks run for every client-credentials request after the
// client is authenticated and before scopes are filtered, so they refuse both there
// (400 invalid_scope, 401 invalid_client). They also bind tokens to the optional
// audience.
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

// The method the request used; oidc-provider has already rejected mixing the two.
function usedAuthMethod(ctx) {
  return ctx.oidc.params.client_secret ? 'client_secret_post' : 'client_secret_basic';
}

// oidc-provider itself holds every other method to the registered one; only basic and post
// are interchangeable to it.
const SECRET_PAIR = new Set(['client_secret_basic', 'client_secret_post']);

function assertClientPolicy(ctx, client, allowed, enforceAuthMethod) {
  if (
    enforceAuthMethod
    && SECRET_PAIR.has(client.clientAuthMethod)
    && usedAuthMethod(ctx) !== client.clientAuthMethod
  ) {
    throw new errors.InvalidClientAuth('registered authentication method not used');
  }
  const requested = (ctx.oidc.params.scope ?? '').split(' ').filter(Boolean);
  const permitted = allowed.get(client.clientId) ?? new Set();
  for (const scope of requested) {
    if (!permitted.has(scope)) throw new errors.InvalidScope('requested scope is not allowed', scope);
  }
}

function clientMetadata(client) {
  return {
    client_id: client.clientId,
    ...(client.secret ? { client_secret: client.secret } : {}),
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: client.authMethod,
    ...(client.scopes.length ? { scope: client.scopes.join(' ') } : {}),
    ...(client.jwks ? { jwks: client.jwks } : {}),
    ...(client.sanDns ? { tls_client_auth_san_dns: client.sanDns } : {}),
    ...(client.certificateBound ? { tls_client_certificate_bound_access_tokens: true } : {}),
  };
}

// RFC 8705 through oidc-provider's documented mTLS hooks: the certificate comes from the TLS
// socket (the server asks for one and lets the hooks judge it), "authorized" means it chains to
// the configured CA, and tls_client_auth clients are matched on a DNS subjectAltName.
const mTLS = {
  enabled: true,
  certificateBoundAccessTokens: true,
  selfSignedTlsClientAuth: true,
  tlsClientAuth: true,
  getCertificate(ctx) {
    const peer = ctx.socket.getPeerX509Certificate?.();
    return peer ? peer.toString() : undefined;
  },
  certificateAuthorized(ctx) {
    return ctx.socket.authorized === true;
  },
  certificateSubjectMatches(ctx, property, expected) {
    const peer = ctx.socket.getPeerX509Certificate?.();
    if (!peer || property !== 'tls_client_auth_san_dns') return false;
    return (peer.subjectAltName ?? '').split(', ').includes(`DNS:${expected}`);
  },
};

/** Returns a configured Provider for the given issuer and parsed harness config. */
export function buildProvider(issuer, config) {
  const allowed = new Map(config.clients.map((c) => [c.clientId, new Set(c.scopes)]));
  const allScopes = [...new Set(config.clients.flatMap((c) => c.scopes))];
  // A fresh key per process: JWT access tokens and the (unused) ID token signer need one,
  // and a generated key keeps oidc-provider from falling back to its public dev key.
  const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

  const resourceServer = {
    audience: config.audience,
    scope: allScopes.join(' '),
    accessTokenTTL: config.tokenTTL,
    accessTokenFormat: config.format,
    ...(config.format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
  };

  return new Provider(issuer, {
    clients: config.clients.map(clientMetadata),
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_post',
      'client_secret_jwt',
      'private_key_jwt',
      // oidc-provider accepts the RFC 8705 methods only with its mTLS feature on (https).
      ...(config.tls ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
    ],
    clientAuthSigningAlgValues: ['HS256', 'HS384', 'HS512', 'RS256', 'PS256', 'ES256', 'EdDSA'],
    scopes: allScopes,
    jwks: { keys: [{ ...signingKey, kid: 'harness', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    ttl: { ClientCredentials: config.tokenTTL },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      ...(config.tls ? { mTLS } : {}),
      resourceIndicators: {
        enabled: true,
        async defaultResource(ctx, client) {
          assertClientPolicy(ctx, client, allowed, config.enforceAuthMethod);
          return config.audience ?? undefined;
        },
        async getResourceServerInfo(ctx, resource, client) {
          assertClientPolicy(ctx, client, allowed, config.enforceAuthMethod);
          if (config.audience === null || resource !== config.audience) {
            throw new errors.InvalidTarget('unknown resource indicator');
          }
          return resourceServer;
        },
        async useGrantedResource() {
          return false;
        },
      },
    },
  });
}
