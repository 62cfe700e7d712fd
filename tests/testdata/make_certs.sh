#!/bin/sh
# Makes the TLS fixtures of tests/comm_test.ts and tests/tls_test.ts. The
# files are committed, so this only needs to run again to change them:
#
#   cd tests/testdata && sh make_certs.sh             # both sets below
#   cd tests/testdata && sh make_certs.sh base        # only the first
#   cd tests/testdata && sh make_certs.sh refusals    # only the second
#
# Needs openssl 1.1.1 or later. It writes, in the current directory, the
# base set (valid for 100 years):
#
#   ca.pem                      the test CA (EC P-256), trusted by the tests
#   server.pem, server-key.pem  signed by it, for IP:127.0.0.1, IP:::1 and
#                               DNS:localhost
#   client.pem, client-key.pem  signed by it, for a client to present
#   other-ca.pem                an unrelated CA, to test "wrong CA"
#
# and the refusal set: certificates a client must refuse, for one reason
# each (tests/tls_test.ts). The base CA's key is gone, so they have a CA of
# their own, which those tests trust:
#
#   refusals-ca.pem             their CA (valid for 100 years)
#   expired.pem, expired-key.pem
#                               signed by it, for the same names as
#                               server.pem, but valid only on 1 January 2020
#   other-host.pem, other-host-key.pem
#                               signed by it, valid for 100 years, but only
#                               for DNS:other.example (no IP address)
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

# $1 name, $2 subject, $3 extensions section, $4 CA (default: ca)
make_leaf() {
  ca=${4:-ca}
  key "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA "$ca.pem" -CAkey "$work/$ca-key.pem" \
    -CAcreateserial -CAserial "$work/$ca.srl" -days "$DAYS" -sha256 \
    -extfile "$work/ext.cnf" -extensions "$3" -out "$1.pem"
}

# A leaf valid only between two dates. Before OpenSSL 3.4 (-not_before),
# "openssl x509 -req" cannot set a start date, so "openssl ca" signs it.
# $1 name, $2 subject, $3 extensions section, $4 CA, $5 start, $6 end
# (dates as YYYYMMDDHHMMSSZ)
make_dated_leaf() {
  key "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$work/$1.csr"
  db="$work/$4-db"
  mkdir -p "$db"
  : >"$db/index.txt"
  openssl rand -hex 16 >"$db/serial"
  printf '%s\n' \
    "[ca]" "default_ca = dated" \
    "[dated]" "database = $db/index.txt" "new_certs_dir = $db" \
    "serial = $db/serial" "default_md = sha256" "policy = any" \
    "unique_subject = no" \
    "[any]" "commonName = supplied" >"$db/ca.cnf"
  openssl ca -batch -notext -config "$db/ca.cnf" -in "$work/$1.csr" \
    -cert "$4.pem" -keyfile "$work/$4-key.pem" -startdate "$5" -enddate "$6" \
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
[other_host]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:other.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

base() {
  make_ca ca "/CN=x-comm test CA" "$work/ext.cnf"
  make_ca other-ca "/CN=x-comm unrelated test CA" "$work/ext.cnf"
  make_leaf server "/CN=localhost" server
  make_leaf client "/CN=x-comm test client" client

  openssl verify -CAfile ca.pem server.pem client.pem
}

refusals() {
  make_ca refusals-ca "/CN=x-comm refusals test CA" "$work/ext.cnf"
  make_dated_leaf expired "/CN=localhost" server refusals-ca \
    20200101000000Z 20200102000000Z
  make_leaf other-host "/CN=other.example" other_host refusals-ca

  openssl verify -CAfile refusals-ca.pem other-host.pem
  # Good but for its dates (openssl verify -CAfile … alone says "expired").
  openssl verify -no_check_time -CAfile refusals-ca.pem expired.pem
}

case "${1:-all}" in
all)
  base
  refusals
  ;;
base) base ;;
refusals) refusals ;;
*)
  echo "usage: sh make_certs.sh [all | base | refusals]" >&2
  exit 2
  ;;
esac
