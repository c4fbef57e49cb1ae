#!/bin/sh
# One-time set-up of an organisation's TCMS (run by the `init` service of
# docker-compose.yml, idempotent): the TSA's certificate, the TTP's, DC's and gateway's
# identities, the DC's update repository, the gateway registered for its domain, and the
# trust files the gateways read, the data key, and the S/MIME certificate the gateway signs
# its users' mail with.  Private keys (and the data key) are encrypted with
# TCMS_KEYS__PASSPHRASE.
#
# The signing certificate comes from the organisation's CA.  TCMS_INIT_MAIL_CA says how:
#   unset or a directory   a CA made by `tcms mail ca` (default: $keys/mail-ca, made here if
#                          missing: users' clients must trust its ca.pem) issues it;
#   external               only the key and a request ($keys/mail-signing.csr) are made: have
#                          the organisation's CA sign it, then `tcms mail install CERT.pem`.
set -eu
: "${TCMS_GATEWAY__DOMAINS:?set the organisation's mail domains, e.g. [\"example.org\"]}"
domain=$(echo "$TCMS_GATEWAY__DOMAINS" | tr -d '[]" ' | cut -d, -f1)
keys=${TCMS_KEYS__DIR:-var/keys}
gw=${TCMS_GATEWAY__IDENTITY:-gateway@$domain}
tcms db upgrade
[ -e "$keys/tss-cert.pem" ] || tcms tss init
for id in "${TCMS_TTP__IDENTITY:-ttp@tcms.local}:ttp" "${TCMS_DC__IDENTITY:-dc@tcms.local}:dc" \
          "$gw:gateway"; do
  name=${id%:*}; kind=${id#*:}
  tcms keys export "$name" >/dev/null 2>&1 || tcms keys create "$name" --kind "$kind"
done
[ -d "${TCMS_DC__UPDATES_DIR:-var/updates}" ] || tcms dc updates init
# the data key that encrypts mail and key shares in the database, shared by the replicas
[ -e "$keys/data-keys.keyring" ] || tcms keys data-key create
# the S/MIME certificate of the gateway (docs/mail.md)
cert=${TCMS_MAIL__SIGNING_CERT:-$keys/mail-signing-cert.pem}
if [ ! -e "$cert" ]; then
  ca=${TCMS_INIT_MAIL_CA:-$keys/mail-ca}
  if [ "$ca" = external ]; then
    [ -e "$keys/mail-signing.csr" ] || tcms mail csr "$keys/mail-signing.csr"
    echo "Have the organisation's CA sign $keys/mail-signing.csr for S/MIME (emailProtection),"
    echo "then run: tcms mail install CERT.pem   (the gateway does not start without it)"
  else
    [ -e "$ca/ca.pem" ] || tcms mail ca "$ca" --org "$domain"
    tcms mail issue --ca "$ca"
    echo "The gateway signs users' mail with a certificate from $ca/ca.pem: have mail"
    echo "clients trust that CA, or replace the certificate by one from your own CA."
  fi
fi
tcms keys export "$gw" > "$keys/gateway-public.json"
protocol="${TCMS_GATEWAY__PROTOCOL_ADDRESS:-tcms-gateway}@$domain"
tcms dc register "$domain" "$keys/gateway-public.json" --protocol-address "$protocol"
echo "TCMS initialised for $domain; protocol mail goes to $protocol"
echo "Route that address to the gateway's intake in your MTA, e.g. Postfix:"
echo "  transport_maps = hash:/etc/postfix/transport   with the line"
echo "  $protocol lmtp:inet:GATEWAY-HOST:8024"
