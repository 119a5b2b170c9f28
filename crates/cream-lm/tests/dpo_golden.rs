//! The DPO loss and its gradients on the default model against ../shared/golden/smollm2_dpo.json
//! (policy P1 = reference with model.norm.weight scaled by 1.01f32).

mod common;

use common::*;

#[test]
#[ignore = "needs `just setup`: the default model in data/models"]
fn dpo_loss_and_gradients_match_golden() {
    let lm = default_model();
    let norm = lm.model.named_vars().iter().find(|(n, _)| n == "model.norm.weight").unwrap().1.clone();
    let original = norm.as_tensor().copy().unwrap();
    let checks = cream_lm::golden::check_dpo(lm, &golden("smollm2_dpo.json")).unwrap();
    assert_eq!(checks.len(), 2);
    for c in &checks {
        assert!(c.passes(), "dpo golden: {c:?}");
        eprintln!("dpo golden: groups {:?} loss diff {:.2e}, max relative grad diff {:.2e}", c.groups, c.loss_diff, c.max_rel_grad_diff);
    }
    // The model is restored.
    let check: f32 = (norm.as_tensor() - &original).unwrap().abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert_eq!(check, 0.0);
}
