#!/usr/bin/env bash
# Start only the Binance stream service (and what it depends on) with docker compose.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker > /dev/null 2>&1 || ! docker compose version > /dev/null 2>&1; then
    echo "error: 'docker compose' is not available. Install Docker with the Compose plugin:" >&2
    echo "       https://docs.docker.com/compose/install/" >&2
    exit 1
fi

docker compose up -d binance-stream
echo "started; watch it with: docker compose ps binance-stream && docker compose logs binance-stream -f"
