#!/usr/bin/env bash
# The HF interop tests on the oldest transformers setup.py allows (the newest is the one `make test`
# installs, so the normal suite covers it). The old release goes into a side folder under .venv/
# with the dependency versions it accepts, pinned; numpy, torch and safetensors stay the venv's.
# Reuses the folder when present. Usage: bash tools/ci/hf_versions.sh  (after `make install`)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "error: $PY not found; run 'make install' first (or set PY)" >&2; exit 1; }
VERSION=$(grep -o 'transformers>=[0-9.]*' setup.py | cut -d= -f2)
[ -n "$VERSION" ] || { echo "error: no 'transformers>=X' in setup.py" >&2; exit 1; }
DIR=.venv/hf-oldest-$VERSION
if [ ! -f "$DIR/.complete" ]; then
  rm -rf "$DIR"
  # tokenizers / huggingface_hub: the newest releases this transformers accepts (it checks them on
  # import); requests & co.: huggingface_hub 0.x needs them, newer venvs may not have them
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$DIR" \
    "transformers==$VERSION" tokenizers==0.13.3 huggingface_hub==0.24.7 \
    requests==2.32.3 urllib3==2.2.3 certifi==2024.8.30 charset-normalizer==3.4.0
  touch "$DIR/.complete"
fi
export PYTHONPATH="$PWD/$DIR${PYTHONPATH:+:$PYTHONPATH}"
GOT=$("$PY" -c "import transformers; print(transformers.__version__)")
[ "$GOT" = "$VERSION" ] || { echo "error: imported transformers $GOT, expected $VERSION from $DIR" >&2; exit 1; }
echo "HF tests on transformers $GOT (oldest supported)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_hf_equivalence.py tests/test_convert.py -k hf
