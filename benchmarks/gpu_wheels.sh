#!/usr/bin/env bash
# Fill .whl/ (ignored by git through .git/info/exclude) with the wheels benchmarks/gpu_check.sh needs on a GPU
# machine that cannot reach a package index: transformers at the version this project is tested with, and regex
# (transformers checks regex>=2025.10.22 at import; the image's may be older). The device image already has
# torch, accelerate, tokenizers, safetensors and huggingface_hub new enough for it (checked by gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
VERSION=$(python -c "import transformers; print(transformers.__version__)")
REGEX=$(python -c "from importlib.metadata import version; print(version('regex'))")
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .whl "transformers==${VERSION}" "regex==${REGEX}"
ls -la .whl
