#!/usr/bin/env bash
# Installs everything Troupe needs on Debian 12 (run as root): Debian packages and
# libtorch from the PyPI torch==2.11.0 wheel, plus the Python oracles the tests use.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build ccache git python3 python3-pip python3-venv \
  libcaf-dev libgloo-dev libtomlplusplus-dev catch2 nlohmann-json3-dev libcli11-dev \
  libxxhash-dev libpcre2-dev libutf8proc-dev \
  libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev libncurses-dev \
  tmux chromium chromium-driver libjs-dygraphs >/dev/null
PIP="python3 -m pip"
PIP_FLAGS="--quiet --disable-pip-version-check"
# Debian's system Python refuses global installs (PEP 668); pyenv/venv Pythons do not.
if python3 -c 'import sys; sys.exit(0 if sys.prefix == sys.base_prefix and sys.prefix.startswith("/usr") else 1)'; then
  PIP_FLAGS="$PIP_FLAGS --break-system-packages"
fi
$PIP install $PIP_FLAGS torch==2.11.0 "transformers>=4.45" safetensors tokenizers tensorboard selenium tiktoken
