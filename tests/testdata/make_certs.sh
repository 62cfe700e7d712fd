#!/bin/sh
# Makes the TLS fixtures of tests/comm_test.ts. The files are committed, so
# this only needs to run again to change them (they are valid for 100 years):
#
#   cd tests/testdata && sh make_certs.sh
#
# Needs openssl 1.1.1 or later. It writes, in the current directory:
#
#   ca.pem                      the test CA (EC P-256), trusted by the tests
#   server.pem, server-key.pem  signed by it, for IP:127.0.0.1, IP:::1 and
#                               DNS:localhost
#   client.pem, client-key.pem  signed by it, for a client to present
#   other-ca.pem                an unrelated CA, to test "wrong CA"
#
# Keys are PKCS#8 PEM ("BEGIN PRIVATE KEY"), which Deno.listenTls and
# Deno.connectTls accept. The CA keys are thrown away: nothing else will
# ever be signed by these CAs.
set -eu

DAYS=36500
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# $1 name, $2 subject, $3 extensions file
make_ca() {
  key "$work/$1-key.pem"
  openssl req -x509 -new -key "$work/$1-key.pem" -subj "$2" -days "$DAYS" \
    -sha256 -extensions v3_ca -config "$3" -out "$1.pem"
}

# $1 name, $2 subject, $3 extensions section
make_leaf() {
  key "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA ca.pem -CAkey "$work/ca-key.pem" \
    -CAcreateserial -CAserial "$work/ca.srl" -days "$DAYS" -sha256 \
    -extfile "$work/ext.cnf" -extensions "$3" -out "$1.pem"
}

cat >"$work/ext.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

make_ca ca "/CN=x-comm test CA" "$work/ext.cnf"
make_ca other-ca "/CN=x-comm unrelated test CA" "$work/ext.cnf"
make_leaf server "/CN=localhost" server
make_leaf client "/CN=x-comm test client" client

openssl verify -CAfile ca.pem server.pem client.pem
