//! The DPO loss and its gradients on the default model against ../shared/golden/smollm2_dpo.json
//! (policy P1 = reference with model.norm.weight scaled by 1.01f32).

mod common;

use common::*;
use cream_lm::train::{DpoBatch, GradAccumulator, dpo_loss};
use cream_lm::{Conversation, TokenBatch};

#[test]
fn dpo_loss_and_gradients_match_golden() {
    let g = golden("smollm2_dpo.json");
    let lm = default_model();
    let beta = g["beta"].as_f64().unwrap();
    // P1: scale model.norm.weight by 1.01 in f32 (restored at the end).
    let norm = lm.model.named_vars().iter().find(|(n, _)| n == "model.norm.weight").unwrap().1.clone();
    let original = norm.as_tensor().copy().unwrap();
    norm.set(&(norm.as_tensor() * f64::from(1.01f32)).unwrap()).unwrap();
    let groups = g["groups"].as_array().unwrap();
    for case in g["grad_cases"].as_array().unwrap() {
        let c_val = case["C"].as_f64().unwrap();
        let mut chosen = Vec::new();
        let mut rejected = Vec::new();
        let mut ref_c = Vec::new();
        let mut ref_r = Vec::new();
        for gi in case["groups"].as_array().unwrap() {
            let grp = &groups[gi.as_u64().unwrap() as usize];
            let resp = grp["responses"].as_array().unwrap();
            let (ci, ri) = (grp["chosen_index"].as_u64().unwrap() as usize, grp["rejected_index"].as_u64().unwrap() as usize);
            let conv = |r: &serde_json::Value| Conversation { ids: u32s(&r["token_ids"]), score_start: r["score_start"].as_u64().unwrap() as usize };
            chosen.push(conv(&resp[ci]));
            rejected.push(conv(&resp[ri]));
            ref_c.push(resp[ci]["S_ref"].as_f64().unwrap());
            ref_r.push(resp[ri]["S_ref"].as_f64().unwrap());
        }
        let cb = TokenBatch::new(&lm.model, &chosen.iter().collect::<Vec<_>>()).unwrap();
        let rb = TokenBatch::new(&lm.model, &rejected.iter().collect::<Vec<_>>()).unwrap();
        let cs = vec![c_val; chosen.len()];
        let out = dpo_loss(&lm.model, &DpoBatch { chosen: &cb, rejected: &rb, ref_chosen: &ref_c, ref_rejected: &ref_r, c: &cs }, beta).unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
        let want = case["loss"].as_f64().unwrap();
        assert!((loss - want).abs() < 1e-4, "loss {loss} vs golden {want}");
        let mut acc = GradAccumulator::new(&lm.model);
        acc.backward(&out.loss, &lm.model).unwrap();
        let (grads, _) = acc.take_clipped(0.0).unwrap();
        let mut worst: f64 = 0.0;
        for (name, want) in case["grads"].as_object().unwrap() {
            let i = lm.model.named_vars().iter().position(|(n, _)| n == name).unwrap();
            let gflat: Vec<f32> = grads[i].flatten_all().unwrap().to_vec1().unwrap();
            let want = f64s(want);
            let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (j, w) in want.iter().enumerate() {
                let rel = (gflat[j] as f64 - w).abs() / scale;
                worst = worst.max(rel);
                assert!(rel < 1e-4 || (gflat[j] as f64 - w).abs() < 1e-7, "{name}[{j}]: {} vs golden {w}", gflat[j]);
            }
        }
        eprintln!("dpo golden: groups {:?} loss diff {:.2e}, max relative grad diff {worst:.2e}", case["groups"], (loss - want).abs());
    }
    norm.set(&original).unwrap();
    // Sanity: the model is restored.
    let check: f32 = (norm.as_tensor() - &original).unwrap().abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert_eq!(check, 0.0);
}
