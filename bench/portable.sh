#!/usr/bin/env bash
# The cost of portable binaries (`just bench-portable`): cream-bench built as the project builds it
# (.cargo/config.toml: no target-cpu, x86-64 baseline plus run-time dispatch in gemm) against the
# same code built with `-C target-cpu=native`, on the default model, alternating A/B in fresh
# processes. Writes bench/portable.md (medians, ratios native/portable, every run).
# Env: REPS (default 3), WORKLOADS (default "score dpo gen-b16"), THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${CARGO_TARGET_DIR:-target}
portable=$target/release/cream-bench
native_dir=$target/native
model=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
work=bench/work
mkdir -p "$work"
threads=${THREADS:-$(nproc)}

cargo build --release --workspace --quiet
RUSTFLAGS="-C target-cpu=native" cargo build --release -p cream-bench --target-dir "$native_dir" --quiet
native=$native_dir/release/cream-bench
[ -f "$work/inputs.json" ] || "$portable" inputs --model "$model" --out "$work/inputs.json"

raw=$work/portable.jsonl
: >"$raw"
for rep in $(seq 1 "${REPS:-3}"); do
    for w in ${WORKLOADS:-score dpo gen-b16}; do
        case $w in gen-b*) args=(--workload gen --batch "${w#gen-b}") ;; *) args=(--workload "$w") ;; esac
        order=(portable native)
        [ $((rep % 2)) = 0 ] && order=(native portable)
        for build in "${order[@]}"; do
            exe=$portable
            [ "$build" = native ] && exe=$native
            "$exe" --threads "$threads" run "${args[@]}" --inputs "$work/inputs.json" --model "$model" |
                python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), build=sys.argv[1], name=sys.argv[2], order=sys.argv[3]))) for l in sys.stdin if l.startswith("{")]' \
                    "$build" "$w" "${order[*]}" >>"$raw"
        done
    done
done

python3 - "$raw" "$threads" <<'PY' >bench/portable.md
import json, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("# Portable vs native build (`just bench-portable`)\n")
print(f"- commit {commit}; {sys.argv[2]} threads; CPU flags: {' '.join(shown)}; default model, f32")
print("- portable: the default build (.cargo/config.toml: x86-64 baseline; gemm picks AVX2/AVX-512 at run time)")
print("- native: the same code with `RUSTFLAGS=\"-C target-cpu=native\"`")
print("- fresh process per run, order alternating per repetition; medians; ratio = native / portable (> 1: native faster)\n")
print("| workload | portable tok/s | native tok/s | ratio | portable tok/CPU-s | native tok/CPU-s | ratio | runs |")
print("|---|---|---|---|---|---|---|---|")
for name in dict.fromkeys(r["name"] for r in rows):
    med = lambda b, k: statistics.median(r[k] for r in rows if r["name"] == name and r["build"] == b)
    n = sum(1 for r in rows if r["name"] == name) // 2
    p, q = med("portable", "tok_per_s"), med("native", "tok_per_s")
    pc, qc = med("portable", "tok_per_cpu_s"), med("native", "tok_per_cpu_s")
    print(f"| {name} | {p:.1f} | {q:.1f} | **{q/p:.3f}** | {pc:.1f} | {qc:.1f} | **{qc/pc:.3f}** | {n} |")
print("\n## Every run\n")
print("| workload | order | build | wall s | CPU s | CPU/wall | tok/s | tok/CPU-s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['name']} | {r['order']} | {r['build']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['cpu_per_wall']:.2f} | {r['tok_per_s']:.1f} | {r['tok_per_cpu_s']:.1f} |")
PY
cat bench/portable.md
