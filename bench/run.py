#!/usr/bin/env python3
"""Orchestrates `just bench`: runs each workload through cream (`cream-bench run`) and the PyTorch
baseline (`bench/baseline.py run`), one fresh process per implementation and repetition,
alternating the order (A/B, then B/A), and writes a table of medians, cream/baseline ratios and
the % of the hardware limit to bench/results.md (raw records to bench/results.json).

It builds nothing: the cream-bench binary, the exported HF directory and inputs.json must exist
(the justfile's `bench` recipe and bench/gpu.sh make them). Needs only the Python standard
library itself; the baseline runs under --python (the bench venv).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (workload, generation batch); batch is ignored for score / dpo.
FULL_WORKLOADS = [("gen", 1), ("gen", 16), ("gen", 64), ("score", 0), ("dpo", 0)]


# ------------------------------------------------------------------------------------------------
# Pure helpers (tested by bench/test_run.py).


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def parse_records(stdout):
    """The JSON objects printed one per line (other lines are ignored)."""
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def workload_key(rec):
    return "%s-b%d" % (rec["workload"], rec["batch"]) if rec["workload"] == "gen" else rec["workload"]


class Shape:
    """The matmul-relevant sizes of a decoder, from a Hugging Face config.json."""

    def __init__(self, cfg):
        self.L = cfg["num_hidden_layers"]
        self.h = cfg["hidden_size"]
        self.i = cfg["intermediate_size"]
        self.H = cfg["num_attention_heads"]
        self.Hkv = cfg.get("num_key_value_heads") or self.H
        self.d = cfg.get("head_dim") or self.h // self.H
        self.V = cfg["vocab_size"]
        self.tied = bool(cfg.get("tie_word_embeddings", False))

    def linear_flops_per_token(self):
        """2 x multiply-adds of q, k, v, o and the SwiGLU MLP, all layers (no vocabulary head)."""
        h, d = self.h, self.d
        per_layer = h * self.H * d + 2 * h * self.Hkv * d + self.H * d * h + 3 * h * self.i
        return 2 * self.L * per_layer

    def head_flops(self):
        return 2 * self.h * self.V

    def attn_flops(self, ctx):
        """QK^T and PV of one query over `ctx` keys, all layers and heads."""
        return 4 * self.L * self.H * self.d * ctx

    def n_params(self):
        h, d = self.h, self.d
        per_layer = h * self.H * d + 2 * h * self.Hkv * d + self.H * d * h + 3 * h * self.i + 2 * h
        return self.V * h * (1 if self.tied else 2) + self.L * per_layer + h

    def kv_bytes_per_ctx(self):
        return 2 * self.L * self.Hkv * self.d * 4


def seq_flops(shape, n, scored):
    """Forward FLOPs of a full sequence of n tokens whose last `scored` positions need the head."""
    return n * shape.linear_flops_per_token() + shape.attn_flops(1) * n * (n + 1) / 2 + scored * shape.head_flops()


def limit_seconds(shape, workload, inputs, rec, peak_flops, bw_bytes):
    """The hardware-limit time of one record's work: FLOPs / matmul peak, and for decoding the
    larger of that and bytes read (all weights per step, the KV cache per token) / bandwidth.
    Returns (seconds, flops, bytes)."""
    if workload == "gen":
        b = rec["batch"]
        prompts = [inputs["gen"]["prompts"][j % len(inputs["gen"]["prompts"])] for j in range(b)]
        prefill = sum(seq_flops(shape, len(p), 1) for p in prompts)
        gen_tokens = rec["tokens"]
        steps = max(rec.get("steps") or 1, 1)
        mean_ctx = sum(len(p) for p in prompts) / b + steps / 2
        decode_flops = max(gen_tokens - b, 0) * (
            shape.linear_flops_per_token() + shape.head_flops() + shape.attn_flops(mean_ctx))
        decode_bytes = (steps - 1) * 4 * shape.n_params() + max(gen_tokens - b, 0) * shape.kv_bytes_per_ctx() * mean_ctx
        t = prefill / peak_flops + max(decode_flops / peak_flops, decode_bytes / bw_bytes)
        return t, prefill + decode_flops, decode_bytes
    if workload == "score":
        flops = sum(seq_flops(shape, len(s["ids"]), len(s["ids"]) - s["score_start"]) for s in inputs["score"])
        return flops / peak_flops, flops, 0
    if workload == "dpo":
        seqs = [p[k] for p in inputs["dpo"]["pairs"] for k in ("chosen", "rejected")]
        fwd = sum(seq_flops(shape, len(s["ids"]), len(s["ids"]) - s["score_start"]) for s in seqs)
        flops = 3 * fwd  # forward + backward (2x forward)
        return flops / peak_flops, flops, 0
    raise ValueError(workload)


def summarize(records, shape, inputs, peak_flops, bw_bytes):
    """Rows of the results table: per workload and implementation the medians, and the ratios."""
    rows = []
    keys = []
    for r in records:
        k = workload_key(r)
        if k not in keys:
            keys.append(k)
    for k in keys:
        row = {"key": k}
        for impl in ("cream", "pytorch"):
            rs = [r for r in records if workload_key(r) == k and r["impl"] == impl]
            if not rs:
                row[impl] = None
                continue
            limits = [limit_seconds(shape, r["workload"], inputs, r, peak_flops, bw_bytes)[0] for r in rs]
            row[impl] = {
                "n": len(rs),
                "tokens": median([r["tokens"] for r in rs]),
                "wall_s": median([r["wall_s"] for r in rs]),
                "tok_per_s": median([r["tok_per_s"] for r in rs]),
                "tok_per_cpu_s": median([r["tok_per_cpu_s"] for r in rs]),
                "cpu_per_wall": [r["cpu_per_wall"] for r in rs],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "gpu_peak_mb": max((r.get("gpu_peak_mb") or 0) for r in rs) or None,
                "pct_limit": median([100.0 * lim / r["wall_s"] for lim, r in zip(limits, rs)]),
                "limit_s": median(limits),
            }
        c, p = row["cream"], row["pytorch"]
        row["ratio_tok_per_s"] = ratio(c and c["tok_per_s"], p and p["tok_per_s"])
        row["ratio_tok_per_cpu_s"] = ratio(c and c["tok_per_cpu_s"], p and p["tok_per_cpu_s"])
        row["ratio_rss"] = ratio(c and c["peak_rss_mb"], p and p["peak_rss_mb"])
        rows.append(row)
    return rows


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 100:
            return "%.0f" % x
        return ("%%.%df" % digits) % x
    return str(x)


def render_table(rows):
    head = ("| workload | cream tok/s | pytorch tok/s | **ratio** | cream tok/CPU-s | pytorch tok/CPU-s | **ratio** "
            "| CPU/wall cream | CPU/wall pytorch | peak RSS MB cream / pytorch | wall s cream / pytorch "
            "| limit s | % of limit cream / pytorch |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for row in rows:
        c, p = row["cream"] or {}, row["pytorch"] or {}
        cpw = lambda d: " ".join("%.2f" % x for x in d.get("cpu_per_wall", [])) or "-"
        lines.append("| %s | %s | %s | **%s** | %s | %s | **%s** | %s | %s | %s / %s | %s / %s | %s | %s / %s |" % (
            row["key"], fmt(c.get("tok_per_s")), fmt(p.get("tok_per_s")), fmt(row["ratio_tok_per_s"], 2),
            fmt(c.get("tok_per_cpu_s")), fmt(p.get("tok_per_cpu_s")), fmt(row["ratio_tok_per_cpu_s"], 2),
            cpw(c), cpw(p), fmt(c.get("peak_rss_mb")), fmt(p.get("peak_rss_mb")),
            fmt(c.get("wall_s"), 2), fmt(p.get("wall_s"), 2), fmt(c.get("limit_s") or p.get("limit_s"), 3),
            fmt(c.get("pct_limit")), fmt(p.get("pct_limit"))))
    return "\n".join(lines)


def render_runs(records):
    lines = ["| workload | rep | order | impl | tokens | wall s | CPU s | CPU/wall | tok/s | tok/CPU-s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    inner = any(r.get("rep", 0) > 0 for r in records)  # --repeat > 1: show process.run
    for r in records:
        rep = "%d.%d" % (r.get("outer_rep", 0), r.get("rep", 0)) if inner else "%d" % r.get("outer_rep", 0)
        lines.append("| %s | %s | %s | %s | %d | %.2f | %.2f | %.2f | %.1f | %.1f | %.0f |" % (
            workload_key(r), rep, r.get("order", "-"), r["impl"], r["tokens"], r["wall_s"],
            r["cpu_s"], r["cpu_per_wall"], r["tok_per_s"], r["tok_per_cpu_s"], r["peak_rss_mb"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Running things.


def sh(cmd, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(args):
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    lscpu = sh(["lscpu"])
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    info["cpu"] = model.group(1).strip() if model else platform.processor()
    info["vcpus"] = os.cpu_count()
    flags = re.search(r"^Flags:\s*(.+)$", lscpu, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    info["flags"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags)
    info["rustc"] = sh(["rustc", "--version"]) or "(not here: prebuilt binary)"
    lock = os.path.join(ROOT, "Cargo.lock")
    candle = None
    if os.path.exists(lock):
        m = re.search(r'name = "candle-core"\nversion = "([^"]+)"', open(lock).read())
        candle = m and m.group(1)
    info["candle"] = candle or "?"
    info["python_stack"] = sh([args.python, "-c", "import sys, torch, transformers; print('python %s, torch %s, transformers %s' % (sys.version.split()[0], torch.__version__, transformers.__version__))"])
    info["commit"] = args.commit or sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?"
    if sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]):
        info["commit"] += " (+ uncommitted changes)"
    if args.device == "cuda":
        info["gpu"] = sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    return info


def run_proc(cmd, env, timeout, log):
    t0 = time.time()
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=log, flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        print("  timed out after %ds" % timeout, file=log, flush=True)
        return []
    recs = parse_records(p.stdout)
    if p.returncode != 0 or not recs:
        print("  failed (exit %d):\n%s" % (p.returncode, p.stderr[-3000:]), file=log, flush=True)
        return []
    print("  %.1fs" % (time.time() - t0), file=log, flush=True)
    return recs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cream", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "cream-bench"))
    ap.add_argument("--python", default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--model", default=os.path.join(ROOT, "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"), help="cream's model (GGUF or HF dir)")
    ap.add_argument("--hf", default=os.path.join(HERE, "work", "smollm2-hf"), help="the exported HF dir (baseline)")
    ap.add_argument("--inputs", default=os.path.join(HERE, "work", "inputs.json"))
    ap.add_argument("--random-shape", default=None, help="random models of this shape (cream-bench shape NAME)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=3, help="fresh-process repetitions per workload")
    ap.add_argument("--reps-big", type=int, default=2, help="repetitions for generation at batch >= 64")
    ap.add_argument("--repeat", type=int, default=1, help="measured runs inside each process")
    ap.add_argument("--warmup", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--workloads", default=None, help="comma list of gen-bN, score, dpo (default: all)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny workloads, 1 repetition each order")
    ap.add_argument("--out", default=None, help="default bench/results.md (--quick: bench/work/results-quick.md)")
    ap.add_argument("--json", default=None, help="raw records (default: --out with .json)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--probes", default="both", choices=["start", "both"],
                    help="probe at the start only, or at start and end (the VM's capacity varies)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(HERE, "work", "results-quick.md") if args.quick else os.path.join(HERE, "results.md")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    args.json = args.json or os.path.splitext(args.out)[0] + ".json"
    log = sys.stderr
    started = time.time()

    workloads = FULL_WORKLOADS
    if args.workloads:
        workloads = []
        for w in args.workloads.split(","):
            m = re.fullmatch(r"gen-b(\d+)", w.strip())
            workloads.append(("gen", int(m.group(1))) if m else (w.strip(), 0))
    inputs_path = args.inputs
    work_dir = os.path.dirname(os.path.abspath(inputs_path))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CREAM_DEVICE"] = "cpu"

    shape_cfg_path = None
    if args.random_shape:
        shape_cfg_path = os.path.join(work_dir, "shape-%s.json" % args.random_shape)
        with open(shape_cfg_path, "w") as f:
            f.write(sh([args.cream, "shape", args.random_shape]))
        inputs_path = os.path.join(work_dir, "inputs-%s.json" % args.random_shape)
        subprocess.run([args.cream, "inputs", "--random-shape", args.random_shape, "--out", inputs_path], check=True, env=env, stdout=subprocess.DEVNULL)
        shape = Shape(json.load(open(shape_cfg_path)))
    else:
        hf_cfg = os.path.join(args.hf, "config.json")
        shape = Shape(json.load(open(hf_cfg)))
    inputs = json.load(open(inputs_path))

    if args.quick:
        # Tiny versions of every workload, so the whole path runs in a few minutes.
        inputs["score"] = inputs["score"][:8]
        inputs["dpo"]["pairs"] = inputs["dpo"]["pairs"][:1]
        inputs_path = os.path.join(work_dir, "inputs-quick%s.json" % ("-" + args.random_shape if args.random_shape else ""))
        with open(inputs_path, "w") as f:
            json.dump(inputs, f)
        if not args.workloads:
            workloads = [("gen", 1), ("gen", 8), ("score", 0), ("dpo", 0)]
        args.new_tokens = min(args.new_tokens, 16)
        args.reps, args.reps_big = 2, 2

    threads = ["--threads", str(args.threads)]
    dev = ["--device", args.device]
    if args.random_shape:
        cream_model = ["--random-shape", args.random_shape]
        py_model = ["--random-config", shape_cfg_path, "--random-shape", args.random_shape]
    else:
        cream_model = ["--model", args.model]
        py_model = ["--model", args.hf]
    baseline = [args.python, os.path.join(HERE, "baseline.py")]

    def probes():
        shape_arg = []
        if args.random_shape:
            shape_arg = ["--random-shape", args.random_shape]
        out = run_proc([args.cream, "probe"] + shape_arg + threads, env, args.timeout, log)
        mkn = "2048,%d,%d" % (shape.h, shape.i)
        out += run_proc(baseline + ["probe", "--shape", mkn] + threads + dev, env, args.timeout, log)
        return out

    probe_recs = probes()
    records = []
    for (w, b) in workloads:
        reps = args.reps_big if (w == "gen" and b >= 64) else args.reps
        for rep in range(reps):
            order = ["cream", "pytorch"] if rep % 2 == 0 else ["pytorch", "cream"]
            for impl in order:
                common = ["--workload", w, "--inputs", inputs_path, "--repeat", str(args.repeat), "--warmup", args.warmup]
                if w == "gen":
                    common += ["--batch", str(b), "--new-tokens", str(args.new_tokens)]
                if impl == "cream":
                    cmd = [args.cream, "run"] + common + cream_model + threads
                else:
                    cmd = baseline + ["run"] + common + py_model + threads + dev
                for r in run_proc(cmd, env, args.timeout, log):
                    r["outer_rep"], r["order"] = rep, "/".join(order)
                    records.append(r)
                    print("  %-7s %-8s rep %d.%d: %.1f tok/s, %.1f tok/CPU-s, CPU/wall %.2f, %.0f MB" % (
                        r["impl"], workload_key(r), rep, r.get("rep", 0), r["tok_per_s"], r["tok_per_cpu_s"], r["cpu_per_wall"], r["peak_rss_mb"]), file=log, flush=True)
    if args.probes == "both":
        probe_recs += probes()  # again at the end: the VM's capacity varies; the best counts

    peak = max([p["matmul_gflops"] for p in probe_recs] + [p.get("shape_matmul_gflops") or 0 for p in probe_recs] + [1e-9]) * 1e9
    bw = max([p["bw_gbs"] for p in probe_recs] + [1e-9]) * 1e9
    rows = summarize(records, shape, inputs, peak, bw)
    info = machine_info(args)
    info["threads"] = args.threads
    info["elapsed_min"] = round((time.time() - started) / 60, 1)

    title = args.title or ("cream vs PyTorch/transformers (%s%s)" % (args.device, ", random " + args.random_shape if args.random_shape else ""))
    md = ["# %s" % title, ""]
    md.append("- date: %s; commit %s; took %.1f min" % (info["date"], info["commit"], info["elapsed_min"]))
    md.append("- machine: %s, %d vCPUs, flags: %s%s" % (info["cpu"], info["vcpus"], info["flags"] or "-", ("; GPU: " + info["gpu"]) if info.get("gpu") else ""))
    md.append("- versions: %s; candle %s; %s" % (info["rustc"], info["candle"], info["python_stack"]))
    md.append("- threads: %d for both (cream: rayon/RAYON_NUM_THREADS; PyTorch: torch.set_num_threads); device %s" % (args.threads, args.device))
    md.append("- model: %s (%.1fM parameters, f32); %s" % (
        "random " + args.random_shape if args.random_shape else os.path.basename(args.model), shape.n_params() / 1e6,
        "quick smoke run (tiny workloads)" if args.quick else "generation %d new tokens, T=%.1f, top_p=%.2f" % (args.new_tokens, inputs["gen"]["temperature"], inputs["gen"]["top_p"])))
    md.append("- repetitions: %d per workload (%d for generation at batch >= 64), one fresh process per impl and repetition, order alternating; %d measured run(s) per process after a %s warm-up" % (args.reps, args.reps_big, args.repeat, args.warmup))
    md.append("- limits: f32 matmul peak %.0f GFLOP/s, memory bandwidth %.1f GB/s (best of the probes below)" % (peak / 1e9, bw / 1e9))
    md.append("")
    md.append(render_table(rows))
    md.append("")
    md.append("Medians over the repetitions. tok/CPU-s = tokens per process CPU-second (getrusage, user + system, "
              "all threads): the work per unit of CPU actually obtained, robust to the VM's varying capacity. "
              "Ratios are cream / pytorch (> 1: cream better; for RSS < 1: cream smaller). CPU/wall lists every run. "
              "`limit s` = FLOPs / matmul peak (decoding: the larger of that and weight + KV bytes / bandwidth); "
              "% of limit = limit / measured wall time.")
    md.append("")
    md.append("## Probes")
    md.append("")
    md.append("| impl | device | threads | matmul %s GFLOP/s | model-shape matmul GFLOP/s | bandwidth GB/s (method) |" % "n^3")
    md.append("|---|---|---|---|---|---|")
    for p in probe_recs:
        md.append("| %s | %s | %s | %.0f (n=%d) | %s %s | %.1f (%s) |" % (
            p["impl"], p["device"], p["threads"], p["matmul_gflops"], p["matmul_n"],
            fmt(p.get("shape_matmul_gflops"), 0), p.get("shape_matmul") or "", p["bw_gbs"], p["bw_method"]))
    md.append("")
    md.append("## Every run")
    md.append("")
    md.append(render_runs(records))
    md.append("")
    text = "\n".join(md)
    with open(args.out, "w") as f:
        f.write(text)
    with open(args.json, "w") as f:
        json.dump({"info": info, "probes": probe_recs, "records": records, "rows": rows,
                   "peak_flops": peak, "bandwidth": bw}, f, indent=1)
    print(text)
    missing = [(w, b) for (w, b) in workloads if not any(
        r["workload"] == w and (w != "gen" or r["batch"] == b) for r in records)]
    if missing:
        print("warning: no records for %s (see the log above)" % missing, file=log)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
