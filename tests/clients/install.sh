#!/usr/bin/env bash
# Installs the Node dependencies of the client tests (tests/test_clients.py) into tests/clients/node_modules.
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's install script would download CUDA binaries;
# its CPU binaries ship in the npm package itself, which is all these tests use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# package-lock.json is committed: npm ci installs exactly the tree the tests were run against.
ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund "$@"
