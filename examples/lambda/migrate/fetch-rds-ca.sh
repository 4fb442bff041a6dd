#!/bin/sh
# The RDS certificate bundle, for verify-full against the database instance endpoint.
set -eu
cd "$(dirname "$0")"
curl --fail --silent --show-error -o global-bundle.pem \
    https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
