// Checks a version's JWS in the browser: the Ed25519 signature against the
// deployment's public keys (GetSigningKeys), and the claims against the
// version shown. Where the browser has no Ed25519 in WebCrypto, says so.

import { get } from './api.js';

let keys = null;

function base64url(text) {
  const binary = atob(text.replaceAll('-', '+').replaceAll('_', '/'));
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}

// A sentence on the signature of `version`.
export async function signatureStatus(version) {
  if (!version.jws) return { ok: false, text: 'unsigned (a draft is signed when it is published)' };
  const [header, payload, signature] = version.jws.split('.');
  const kid = JSON.parse(new TextDecoder().decode(base64url(header))).kid;
  keys ??= get('signingKeys').then(
    (reply) => reply.keys ?? [],
    (refusal) => {
      keys = null;
      throw refusal;
    },
  );
  const jwk = (await keys).find((key) => key.kid === kid);
  if (!jwk) return { ok: false, text: `signed by key ${kid}, which the server does not list` };
  const claims = JSON.parse(new TextDecoder().decode(base64url(payload)));
  const subject = `${version.namespace}/${version.name}`;
  if (claims.sub !== subject || claims.ver !== version.version || claims.digest !== version.digest) {
    return { ok: false, text: 'the signed claims do not match this version' };
  }
  let key;
  try {
    key = await crypto.subtle.importKey('jwk', { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, { name: 'Ed25519' }, false, ['verify']);
  } catch {
    return { ok: null, text: `signed by key ${kid} (this browser cannot check Ed25519)` };
  }
  const valid = await crypto.subtle.verify('Ed25519', key, base64url(signature), new TextEncoder().encode(`${header}.${payload}`));
  return valid
    ? { ok: true, text: `verified in this browser: key ${kid}, version ${claims.ver}, digest matches` }
    : { ok: false, text: `the signature does not verify with key ${kid}` };
}
