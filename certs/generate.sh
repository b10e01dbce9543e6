#!/usr/bin/env bash
# Generate a private CA and a serving certificate for the webhook, and print the caBundle.
#
#   certs/generate.sh OUT_DIR [--service NAME] [--namespace NS] [--ip ADDR]...
#
# Writes OUT_DIR/ca.crt, OUT_DIR/ca.key, OUT_DIR/tls.crt, OUT_DIR/tls.key (keys mode 0600)
# and prints the base64 of ca.crt (the webhook's caBundle) on standard output.
# SANs: <service>, <service>.<namespace>, <service>.<namespace>.svc,
# <service>.<namespace>.svc.cluster.local, localhost, and every --ip (default 127.0.0.1).
# Nothing here is ever committed: run it at install or test time.
set -euo pipefail

usage() { sed -n '2,10p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
service=pullsecret-injector
namespace=pullsecret-injector
ips=()
days=365
while [ $# -gt 0 ]; do
  case $1 in
    --service) service=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --ip) ips+=("$2"); shift 2 ;;
    --days) days=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ ${#ips[@]} -gt 0 ] || ips=(127.0.0.1)
command -v openssl >/dev/null || { echo "certs/generate.sh: openssl not found (apt-get install -y openssl)" >&2; exit 1; }

mkdir -p "$out"
umask 077
san="DNS:${service},DNS:${service}.${namespace},DNS:${service}.${namespace}.svc,DNS:${service}.${namespace}.svc.cluster.local,DNS:localhost"
for ip in "${ips[@]}"; do san="${san},IP:${ip}"; done

openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days "$days" \
  -keyout "$out/ca.key" -out "$out/ca.crt" \
  -subj "/CN=pullsecret-injector-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -nodes -newkey rsa:2048 -sha256 \
  -keyout "$out/tls.key" -out "$out/tls.csr" \
  -subj "/CN=${service}.${namespace}.svc" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -out "$out/tls.crt" -days "$days" -sha256 \
  -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san") 2>/dev/null
rm -f "$out/tls.csr" "$out/ca.srl"
chmod 0644 "$out/ca.crt" "$out/tls.crt"
base64 -w0 < "$out/ca.crt"
echo
