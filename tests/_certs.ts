// The test certificates, from tests/testdata (made by make_certs.sh), in PEM.

const testdata = (name: string) =>
  Deno.readTextFileSync(new URL(`./testdata/${name}`, import.meta.url));

/** Our test CA, which signed the server and client certificates. */
export const CA: string = testdata("ca.pem");
/** A CA that signed nothing we use: trusting it alone refuses our server. */
export const OTHER_CA: string = testdata("other-ca.pem");
/** A server certificate for 127.0.0.1, ::1 and localhost, and its key. */
export const SERVER_CERT: string = testdata("server.pem");
export const SERVER_KEY: string = testdata("server-key.pem");
/** A client certificate signed by {@linkcode CA}, and its key. */
export const CLIENT_CERT: string = testdata("client.pem");
export const CLIENT_KEY: string = testdata("client-key.pem");
/** The CA of the certificates that must be refused. */
export const REFUSALS_CA: string = testdata("refusals-ca.pem");
/** Valid on 1 January 2020 only, for the names of {@linkcode SERVER_CERT}. */
export const EXPIRED_CERT: string = testdata("expired.pem");
export const EXPIRED_KEY: string = testdata("expired-key.pem");
/** For other.example only. */
export const OTHER_HOST_CERT: string = testdata("other-host.pem");
export const OTHER_HOST_KEY: string = testdata("other-host-key.pem");
