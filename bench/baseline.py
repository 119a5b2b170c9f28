#!/usr/bin/env python3
"""The PyTorch + transformers baseline of `just bench`: the same workloads as `cream-bench run`
on the same token ids (inputs.json), the same JSON line per measurement ("impl": "pytorch").

  baseline.py run --workload gen|score|dpo --inputs inputs.json (--model HF_DIR | --random-config config.json)
                  [--batch B] [--new-tokens 128] [--threads N] [--device cpu|cuda] [--repeat K] [--warmup tiny|full]
  baseline.py probe [--n 2048] [--bw-mib 1024] [--shape M,K,N] [--threads N] [--device cpu|cuda]
  baseline.py check --model HF_DIR --inputs inputs.json [--golden DIR]

What each workload is (as a user of the Python stack would write it):
  gen    model.generate(do_sample=True, temperature, top_p, top_k=0, max_new_tokens) on B left-padded
         prompts with an attention mask; tokens = generated tokens up to and including the first
         stop token of each row.
  score  forwards over right-padded batches of at most `score_batch_tokens` padded tokens (longest
         first, as cream), log_softmax + gather of the scored tokens; tokens = all sequence tokens.
  dpo    one optimizer step of a plain DPO trainer loop: one policy forward over the 8 sequences
         (chosen + rejected concatenated), per-sequence sums of scored-token log-probs, the CREAM loss
         C*softplus(-D) + (1-C)*softplus(D) with D = beta*((pc-rc)-(pr-rr)), backward, clip 1.0,
         torch.optim.AdamW (weight decay on matrices only, as cream). Optimizer state is created
         before the measured region, as in cream.
"""

import argparse
import json
import os
import resource
import sys
import time


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024.0  # Linux: KiB


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "probe", "check"):
        s = sub.add_parser(name)
        s.add_argument("--threads", type=int, default=None)
        s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        if name in ("run", "check"):
            s.add_argument("--model", help="Hugging Face model directory (cream-bench export)")
            s.add_argument("--inputs", required=True)
        if name == "run":
            s.add_argument("--workload", required=True, choices=["gen", "score", "dpo"])
            s.add_argument("--batch", type=int, default=16)
            s.add_argument("--new-tokens", type=int, default=128)
            s.add_argument("--random-config", help="config.json of a random model (cream-bench shape NAME)")
            s.add_argument("--random-shape", default=None, help="the shape's name, for the records")
            s.add_argument("--repeat", type=int, default=1)
            s.add_argument("--warmup", default="tiny", choices=["tiny", "full"])
        if name == "probe":
            s.add_argument("--n", type=int, default=2048)
            s.add_argument("--bw-mib", type=int, default=1024)
            s.add_argument("--shape", default=None, help="M,K,N of an extra matmul")
        if name == "check":
            s.add_argument("--golden", default=None, help="../shared/golden: compare with smollm2_logprobs.json")
    return p.parse_args(argv)


def setup_torch(args):
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(torch, device):
    if device.type == "cuda":
        return "cuda:%d" % (device.index or 0)
    return "cpu"


def load_model(torch, args, device):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.model:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model.to(device)
        return model, args.model
    with open(args.random_config) as f:
        cfg = json.load(f)
    config = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
    config.torch_dtype = torch.float32
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    return model, "random:" + (args.random_shape or os.path.basename(args.random_config))


def seq_logprob_sums(torch, logits, ids, starts, lens, dtype=None):
    """Sum of log p(ids[b, t]) for t in starts[b]..lens[b] (logits[b, t-1] predicts ids[b, t])."""
    logp = torch.log_softmax(logits[:, :-1].to(dtype or torch.float32), dim=-1)
    picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    pos = torch.arange(1, ids.shape[1], device=ids.device).unsqueeze(0)
    mask = (pos >= starts.unsqueeze(1)) & (pos < lens.unsqueeze(1))
    return (picked * mask).sum(-1)


def pad_right(torch, seqs, device, pad=0):
    width = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s["ids"])] = torch.tensor(s["ids"])
        mask[b, : len(s["ids"])] = 1
    starts = torch.tensor([s["score_start"] for s in seqs])
    lens = torch.tensor([len(s["ids"]) for s in seqs])
    return ids.to(device), mask.to(device), starts.to(device), lens.to(device)


class Workloads:
    def __init__(self, torch, model, inputs, device):
        self.torch, self.model, self.inputs, self.device = torch, model, inputs, device
        self.opt = None

    # --- generation ---------------------------------------------------------------------------
    def gen(self, batch, new_tokens):
        torch, g = self.torch, self.inputs["gen"]
        prompts = [g["prompts"][i % len(g["prompts"])] for i in range(batch)]
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), g["pad_id"], dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        stops = set(g["stop_ids"])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=True,
                temperature=g["temperature"],
                top_p=g["top_p"],
                top_k=0,
                max_new_tokens=new_tokens,
                eos_token_id=g["stop_ids"],
                pad_token_id=g["pad_id"],
            )
        gen = out[:, width:].tolist()
        counts = []
        for row in gen:
            n = len(row)
            for j, t in enumerate(row):
                if t in stops:
                    n = j + 1
                    break
            counts.append(n)
        return {"tokens": sum(counts), "steps": max(counts), "prompt_tokens": sum(len(p) for p in prompts)}

    # --- scoring ------------------------------------------------------------------------------
    def score(self, seqs=None, dtype=None):
        torch = self.torch
        seqs = seqs if seqs is not None else self.inputs["score"]
        budget = self.inputs["score_batch_tokens"]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]["ids"]))
        sums = [None] * len(seqs)
        forwards = 0
        i = 0
        with torch.inference_mode():
            while i < len(order):
                width = len(seqs[order[i]]["ids"])
                group = order[i : i + max(1, budget // width)]
                ids, mask, starts, lens = pad_right(torch, [seqs[g] for g in group], self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                s = seq_logprob_sums(torch, logits, ids, starts, lens, dtype).tolist()
                for g, v in zip(group, s):
                    sums[g] = v
                forwards += 1
                i += len(group)
        return {"tokens": sum(len(s["ids"]) for s in seqs), "steps": forwards, "prompt_tokens": 0, "sums": sums}

    # --- one DPO step -------------------------------------------------------------------------
    def make_optimizer(self):
        torch = self.torch
        d = self.inputs["dpo"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
            lr=d["lr"], betas=(0.9, 0.999), eps=1e-8,
        )
        # Create the state now (PyTorch does it lazily on the first step), outside the timing.
        for p in params:
            self.opt.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }

    def dpo_loss(self, pairs):
        torch = self.torch
        d = self.inputs["dpo"]
        n = len(pairs)
        seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        ids, mask, starts, lens = pad_right(torch, seqs, self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        s = seq_logprob_sums(torch, logits, ids, starts, lens)
        pc, pr = s[:n], s[n:]
        rc = torch.tensor([p["ref_chosen"] for p in pairs], device=self.device)
        rr = torch.tensor([p["ref_rejected"] for p in pairs], device=self.device)
        c = torch.tensor([p["c"] for p in pairs], device=self.device)
        D = d["beta"] * ((pc - rc) - (pr - rr))
        sp = torch.nn.functional.softplus
        return (c * sp(-D) + (1 - c) * sp(D)).mean()

    def dpo(self):
        torch = self.torch
        pairs = self.inputs["dpo"]["pairs"]
        self.model.train()
        loss = self.dpo_loss(pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.inputs["dpo"]["max_grad_norm"])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss).item():
            raise SystemExit("DPO loss is not finite")
        sync(torch, self.device)
        tokens = sum(len(p["chosen"]["ids"]) + len(p["rejected"]["ids"]) for p in pairs)
        return {"tokens": tokens, "steps": 1, "prompt_tokens": 0}

    def warm_up(self, workload):
        torch = self.torch

        def short(s):
            return {"ids": s["ids"][: s["score_start"] + 16], "score_start": s["score_start"]}

        if workload == "gen":
            self.gen(1, 2)
        elif workload == "score":
            self.score([short(self.inputs["score"][0])])
        else:
            p = self.inputs["dpo"]["pairs"][0]
            loss = self.dpo_loss([dict(p, chosen=short(p["chosen"]), rejected=short(p["rejected"]))])
            loss.backward()
            self.model.zero_grad(set_to_none=True)
        sync(torch, self.device)


def prepare(args):
    """torch, the device, inputs.json and the model (in eval mode)."""
    torch = setup_torch(args)
    device = torch.device(args.device)
    with open(args.inputs) as f:
        inputs = json.load(f)
    model, model_name = load_model(torch, args, device)
    model.eval()
    return torch, device, inputs, model, model_name


def cmd_run(args):
    torch, device, inputs, model, model_name = prepare(args)
    if not args.model:
        # A random model has no generation config of its own.
        model.generation_config.pad_token_id = inputs["gen"]["pad_id"]
    w = Workloads(torch, model, inputs, device)
    if args.workload == "dpo":
        w.make_optimizer()
    run = {
        "gen": lambda: w.gen(args.batch, args.new_tokens),
        "score": lambda: w.score(),
        "dpo": lambda: w.dpo(),
    }[args.workload]
    if args.warmup == "full":
        run()
    else:
        w.warm_up(args.workload)
    batch = {"gen": args.batch, "score": len(inputs["score"]), "dpo": len(inputs["dpo"]["pairs"])}[args.workload]
    threads = torch.get_num_threads()
    for rep in range(args.repeat):
        sync(torch, device)
        c0, _ = usage()
        t0 = time.perf_counter()
        work = run()
        sync(torch, device)
        wall = time.perf_counter() - t0
        c1, rss = usage()
        cpu = c1 - c0
        rec = {
            "impl": "pytorch",
            "workload": args.workload,
            "batch": batch,
            "tokens": work["tokens"],
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_per_wall": cpu / wall,
            "tok_per_s": work["tokens"] / wall,
            "tok_per_cpu_s": work["tokens"] / max(cpu, 1e-9),
            "peak_rss_mb": rss,
            "threads": threads,
            "device": device_name(torch, device),
            "model": model_name,
            "steps": work["steps"],
            "prompt_tokens": work["prompt_tokens"],
            "rep": rep,
        }
        if device.type == "cuda":
            rec["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        print(json.dumps(rec), flush=True)


def best_secs(torch, device, f, reps):
    f()
    sync(torch, device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        sync(torch, device)
        best = min(best, time.perf_counter() - t0)
    return best


def cmd_probe(args):
    torch = setup_torch(args)
    device = torch.device(args.device)
    n = args.n
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    secs = best_secs(torch, device, lambda: a @ b, 5)
    shape = [int(x) for x in args.shape.split(",")] if args.shape else None
    shape_gflops = None
    if shape:
        m, k, nn = shape
        x = torch.randn(m, k, device=device)
        y = torch.randn(k, nn, device=device)
        shape_gflops = 2.0 * m * k * nn / best_secs(torch, device, lambda: x @ y, 5) / 1e9
    nbytes = args.bw_mib << 20
    buf = torch.ones(nbytes // 4, device=device)
    if device.type == "cpu":
        bw = nbytes / best_secs(torch, device, lambda: buf.sum(), 3) / 1e9
        method = "sum (read)"
    else:
        bw = 2 * nbytes / best_secs(torch, device, lambda: buf.clone(), 3) / 1e9
        method = "copy (read + write)"
    print(json.dumps({
        "impl": "pytorch", "probe": True, "matmul_n": n, "matmul_gflops": 2.0 * n**3 / secs / 1e9,
        "shape_matmul": shape, "shape_matmul_gflops": shape_gflops, "bw_gbs": bw, "bw_method": method,
        "bw_bytes": nbytes, "threads": torch.get_num_threads(), "device": device_name(torch, device),
    }), flush=True)


def cmd_check(args):
    """The exported directory loads with transformers and gives cream's numbers: the DPO
    reference sums in inputs.json (computed by cream) and, with --golden, the golden log-probs."""
    torch, device, inputs, model, _ = prepare(args)
    w = Workloads(torch, model, inputs, device)
    seqs, want = [], []
    for p in inputs["dpo"]["pairs"]:
        seqs += [p["chosen"], p["rejected"]]
        want += [p["ref_chosen"], p["ref_rejected"]]
    # In f64 as cream's scoring does (an f32 log-sum-exp over the vocabulary moves a 300-token
    # sum by ~1e-3).
    got = w.score(seqs, torch.float64)["sums"]
    worst_ref = max(abs(a - b) for a, b in zip(got, want))
    out = {"impl": "pytorch", "check": True, "max_abs_ref_sum_diff": worst_ref}
    ok = worst_ref < 1e-3
    if args.golden:
        with open(os.path.join(args.golden, "smollm2_logprobs.json")) as f:
            cases = json.load(f)["cases"]
        worst_tok, worst_sum = 0.0, 0.0
        with torch.inference_mode():
            for c in cases:
                ids = torch.tensor([c["token_ids"]], device=device)
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                lp = logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)[c["score_start"] - 1:]
                for a, b in zip(lp.tolist(), c["token_logprobs"]):
                    worst_tok = max(worst_tok, abs(a - b))
                worst_sum = max(worst_sum, abs(lp.sum().item() - c["sum_logprob"]))
        out.update(max_abs_token_diff=worst_tok, max_abs_sum_diff=worst_sum)
        ok = ok and worst_tok < 2e-4 and worst_sum < 1e-3
    out["pass"] = ok
    print(json.dumps(out), flush=True)
    return 0 if ok else 1


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "run":
        if not args.model and not args.random_config:
            raise SystemExit("run needs --model or --random-config")
        cmd_run(args)
        return 0
    if args.cmd == "probe":
        cmd_probe(args)
        return 0
    if not args.model:
        raise SystemExit("check needs --model")
    return cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
