"""Unit tests of run.py's pure parts: `python3 -m unittest bench/test_run.py` (run by `just test`
through crates/cream-bench/tests/bench_scripts.rs)."""

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


if __name__ == "__main__":
    unittest.main()
