#!/usr/bin/env bash
# The CREAM loop of one pipeline config, stage by stage (`just iterate` runs it; see README "Using it").
# Usage: scripts/iterate.sh CONFIG [BIN_DIR]
#   SFT (M0 -> M1); per iteration t: generate(M_t) -> judge(M_t vs M0) -> judge(previous model)
#   -> consistency -> pair -> train dpo (M_t -> M_{t+1}); after the last iteration the consistency
#   of the final models (the last iteration's samples ranked by M_T and M_{T-1}, DPO rewards
#   against M0); then evaluation of every M_i and the report. Every stage is cached: a rerun with
#   nothing changed is all cache hits.
# Env: CREAM_ITERATE_UNTIL=loop|mc|all (default all): stop after the training loop (and the final
#   consistency; no report), report after the log-likelihood evaluations (no generative ones), or
#   run everything. CREAM_EVAL_ORDER=reverse evaluates the models last first (two runs that share
#   M0 and M1, started side by side, then evaluate different models at the same time instead of
#   one waiting on the other's lock). CREAM_ARTIFACTS: the store.
set -euo pipefail
cfg=$1
bin=${2:-${CARGO_TARGET_DIR:-target}/release}
until=${CREAM_ITERATE_UNTIL:-all}
case $until in loop | mc | all) ;; *) echo "CREAM_ITERATE_UNTIL must be loop, mc or all (got $until)" >&2; exit 2 ;; esac

eval "$("$bin/cream-plan" --config "$cfg")"
# Run a stage binary; its last stdout line is the artifact it produced or found.
run() { local out; out=$("$bin/$1" "${@:2}") || exit 1; printf '%s\n' "$out" | tail -n 1; }

echo "== $name: M0 = $base, $iterations iteration(s)" >&2
prompts=$(run cream-prepare --config "$cfg")
m1=$(run cream-train sft --config "$cfg" --prompts "$prompts" --model "$base")
models=("$base" "$m1")
records=()
prev="$base"; cur="$m1"
for t in $(seq 1 "$iterations"); do
    echo "== $name: iteration $t" >&2
    gen=$(run cream-generate --config "$cfg" --prompts "$prompts" --model "$cur" --iteration "$t")
    rcur=$(run cream-judge --config "$cfg" --samples "$gen" --mode dpo --policy "$cur" --reference "$base")
    # The previous model's ranking: computed in every run, so SRLM (fixed C) reports the same
    # consistency diagnostic as CREAM; only CREAM feeds it into the loss.
    if [ "$t" = 1 ]; then
        rprev=$(run cream-judge --config "$cfg" --samples "$gen" --mode likelihood --policy "$base")
    else
        rprev=$(run cream-judge --config "$cfg" --samples "$gen" --mode dpo --policy "$prev" --reference "$base")
    fi
    cons=$(run cream-consistency --config "$cfg" --current "$rcur" --previous "$rprev")
    if [ "$consistency" = 1 ]; then
        pairs=$(run cream-pair --config "$cfg" --samples "$gen" --rewards "$rcur" --consistency "$cons")
    else
        pairs=$(run cream-pair --config "$cfg" --samples "$gen" --rewards "$rcur")
    fi
    next=$(run cream-train dpo --config "$cfg" --pairs "$pairs" --model "$cur")
    records+=(--record "iteration=$t,consistency=$cons,pairs=$pairs,train=$next")
    models+=("$next")
    last_gen=$gen; last_rewards=$rcur
    prev="$cur"; cur="$next"
done
echo "== $name: consistency of the final models" >&2
rfinal=$(run cream-judge --config "$cfg" --samples "$last_gen" --mode dpo --policy "$cur" --reference "$base")
final=$(run cream-consistency --config "$cfg" --current "$rfinal" --previous "$last_rewards")
records+=(--record "final_consistency=$final")
if [ "$until" = loop ]; then exit 0; fi

order=("${!models[@]}")
if [ "${CREAM_EVAL_ORDER:-forward}" = reverse ]; then
    order=(); for ((i = ${#models[@]} - 1; i >= 0; i--)); do order+=("$i"); done
fi
mc_evals=()
if [ "$mc" = 1 ]; then
    echo "== $name: log-likelihood evaluation" >&2
    for i in "${order[@]}"; do
        mc_evals[i]=$(run cream-eval --config "$cfg" --prompts "$prompts" --model "${models[$i]}" --method loglik)
    done
fi
gen_evals=()
if [ "$until" = all ]; then
    echo "== $name: generative evaluation" >&2
    for i in "${order[@]}"; do
        gen_evals[i]=$(run cream-eval --config "$cfg" --prompts "$prompts" --model "${models[$i]}")
    done
fi
for i in "${!models[@]}"; do
    records+=(--record "model=$i,eval=${gen_evals[i]:-},mc=${mc_evals[i]:-}")
done
"$bin/cream-report" --config "$cfg" "${records[@]}"
