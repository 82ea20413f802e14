import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { Subscription } from "../dist/index.js";

/** A CA, a server certificate for localhost and a client certificate, made with openssl. */
function certificates(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem");
  writeFileSync(join(dir, "server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  for (const name of ["server", "client"]) {
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/CN=${name}`,
      "-keyout", `${name}.key`, "-out", `${name}.csr`);
    openssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
      ...(name === "server" ? ["-extfile", "server.ext"] : []), "-out", `${name}.pem`);
  }
  const read = (file) => readFileSync(join(dir, file));
  return { ca: read("ca.pem"), serverCert: read("server.pem"), serverKey: read("server.key"), cert: read("client.pem"), key: read("client.key") };
}

const raw = (x) => x;
const method = (name, responseStream) => ({
  path: `/policyhub.v1.BundleService/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: raw,
  requestDeserialize: raw,
  responseSerialize: raw,
  responseDeserialize: raw,
});
/** A complete, empty snapshot at revision 1. */
const emptySnapshot = Buffer.from([0x08, 0x01, 0x10, 0x01, 0x28, 0x01]);

/** The events until the first state applied, or until `ms` passed. */
async function follow(options, ms) {
  const seen = [];
  for await (const event of new Subscription(options).events(AbortSignal.timeout(ms))) {
    seen.push(event);
    if (event.type === "applied") break;
  }
  return seen;
}

test("a server that requires a client certificate serves a runtime that has one (mTLS), and only that one", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tls-"));
  const server = new grpc.Server();
  try {
    const pems = certificates(dir);
    server.addService(
      { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
      {
        GetSigningKeys: (_call, callback) => callback(null, Buffer.alloc(0)),
        WatchActive: (call) => call.write(emptySnapshot),
      },
    );
    const credentials = grpc.ServerCredentials.createSsl(
      pems.ca,
      [{ private_key: pems.serverKey, cert_chain: pems.serverCert }],
      true,
    );
    const port = await new Promise((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", credentials, (error, port) => (error ? reject(error) : resolve(port))),
    );
    const settings = {
      endpoints: [`https://localhost:${port}`],
      namespace: "payments",
      heartbeatIntervalMs: 1000,
      backoff: { initialMs: 50, maxMs: 100 },
    };
    const served = await follow({ ...settings, tls: { ca: pems.ca, cert: pems.cert, key: pems.key } }, 10_000);
    assert.equal(served.at(-1)?.state?.revision, 1, JSON.stringify(served));
    const refused = await follow({ ...settings, tls: { ca: pems.ca } }, 2_000);
    assert.ok(!refused.some((event) => event.type === "applied"), JSON.stringify(refused));
    assert.ok(refused.some((event) => event.type === "disconnected"), JSON.stringify(refused));
  } finally {
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  }
});
