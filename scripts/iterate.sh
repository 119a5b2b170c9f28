#!/usr/bin/env bash
# The CREAM loop of one pipeline config, stage by stage (`just iterate` runs it; see README "Using it").
# Usage: scripts/iterate.sh [pipeline=]CONFIG [executor=local|slurm] [bin=DIR]
#   SFT (M0 -> M1); per iteration t: generate(M_t) -> judge(M_t vs M0) -> judge(previous model)
#   -> consistency -> pair -> train dpo (M_t -> M_{t+1}); after the last iteration the consistency
#   of the final models (the last iteration's samples ranked by M_T and M_{T-1}, DPO rewards
#   against M0); then evaluation of every M_i and the report. Every stage is cached: a rerun with
#   nothing changed is all cache hits.
# Args (key=value words, any order): [pipeline=]CONFIG (default pipelines/smoke.toml),
#   executor=local|slurm (default $CREAM_EXECUTOR, else local), bin=DIR (the stage binaries;
#   default $CARGO_TARGET_DIR/release); a second bare word is also taken as DIR.
#   executor=slurm submits every stage as Slurm jobs (scripts/slurm.sh; README "Running on a
#   Slurm cluster"): same DAG, same artifact keys and bytes as a local run.
# Env: CREAM_ITERATE_UNTIL=loop|mc|all (default all): stop after the training loop (and the final
#   consistency; no report), report after the log-likelihood evaluations (no generative ones), or
#   run everything. CREAM_EVAL_ORDER=reverse evaluates the models last first (two runs that share
#   M0 and M1, started side by side, then evaluate different models at the same time instead of
#   one waiting on the other's lock). CREAM_ARTIFACTS: the store.
set -euo pipefail
cfg=pipelines/smoke.toml
bin=${CARGO_TARGET_DIR:-target}/release
executor=${CREAM_EXECUTOR:-local}
bare=0
for arg in "$@"; do
    case $arg in
        pipeline=*) cfg=${arg#pipeline=} ;;
        executor=*) executor=${arg#executor=} ;;
        bin=*) bin=${arg#bin=} ;;
        *=*) echo "iterate: unknown setting ${arg%%=*} (expected pipeline=, executor= or bin=)" >&2; exit 2 ;;
        *) if [ "$bare" = 0 ]; then cfg=$arg; else bin=$arg; fi; bare=$((bare + 1)) ;;
    esac
done
until=${CREAM_ITERATE_UNTIL:-all}
case $until in loop | mc | all) ;; *) echo "CREAM_ITERATE_UNTIL must be loop, mc or all (got $until)" >&2; exit 2 ;; esac

eval "$("$bin/cream-plan" --config "$cfg")"
case $executor in
    local)
        # Run a stage binary; its last stdout line is the artifact it produced or found.
        run() { local out; out=$("$bin/$1" "${@:2}") || exit 1; printf '%s\n' "$out" | tail -n 1; }
        # A stage whose work is per prompt (generate, judge, eval): one process here.
        run_sharded() { run "$@"; }
        ;;
    slurm)
        # shellcheck source=scripts/slurm.sh
        source "$(dirname "${BASH_SOURCE[0]}")/slurm.sh"
        run() { slurm_run "$@"; }
        run_sharded() { slurm_run_sharded "$@"; }
        ;;
    *) echo "iterate: executor must be local or slurm (got $executor)" >&2; exit 2 ;;
esac

echo "== $name: M0 = $base, $iterations iteration(s)" >&2
prompts=$(run cream-prepare --config "$cfg")
m1=$(run cream-train sft --config "$cfg" --prompts "$prompts" --model "$base")
models=("$base" "$m1")
records=()
prev="$base"; cur="$m1"
for t in $(seq 1 "$iterations"); do
    echo "== $name: iteration $t" >&2
    gen=$(run_sharded cream-generate --config "$cfg" --prompts "$prompts" --model "$cur" --iteration "$t")
    rcur=$(run_sharded cream-judge --config "$cfg" --samples "$gen" --mode dpo --policy "$cur" --reference "$base")
    # The previous model's ranking: computed in every run, so SRLM (fixed C) reports the same
    # consistency diagnostic as CREAM; only CREAM feeds it into the loss.
    if [ "$t" = 1 ]; then
        rprev=$(run_sharded cream-judge --config "$cfg" --samples "$gen" --mode likelihood --policy "$base")
    else
        rprev=$(run_sharded cream-judge --config "$cfg" --samples "$gen" --mode dpo --policy "$prev" --reference "$base")
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
rfinal=$(run_sharded cream-judge --config "$cfg" --samples "$last_gen" --mode dpo --policy "$cur" --reference "$base")
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
        gen_evals[i]=$(run_sharded cream-eval --config "$cfg" --prompts "$prompts" --model "${models[$i]}")
    done
fi
for i in "${!models[@]}"; do
    records+=(--record "model=$i,eval=${gen_evals[i]:-},mc=${mc_evals[i]:-}")
done
if [ "$executor" = local ]; then
    "$bin/cream-report" --config "$cfg" "${records[@]}" # prints the report, then its artifact path
else
    report=$(run cream-report --config "$cfg" "${records[@]}")
    "$bin/cream-report" --config "$cfg" "${records[@]}" --quiet # a cache hit: prints the report and its path
fi
