"""A killed pruning run resumes bit for bit: every pruning method x training method that draws random numbers."""

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.pruning import METHODS

CONFIG = """
general: {{name: kill-{m}-{t}, progress: false}}
model: {{arch: cnn_small}}
data: {{dataset: synthetic, num_train: 64, num_test: 8, batch_size: 32}}
training: {{method: {t}, epochs: 1, eps_warmup_epochs: 0, eps_ramp_epochs: 1}}
pruning: {{method: {m}, rounds: 2, rate: 0.2, channel_rate: 0.2, score_epochs: 1, score_lr: 1.0, saliency_batches: 1}}
verification: {{eps: 2/255, pgd_steps: 1}}
"""

#: the pairs that draw random numbers: FGSM+GradAlign training (random start, noise) with every method,
#: in the pruning step's objective too for the data-driven criteria (snip, taylor, hydra, hydra_nrs), and the
#: random criterion
PAIRS = [(m, "fgsm") for m in METHODS] + [("random", "standard")]


@pytest.mark.parametrize("method,training", PAIRS, ids=[f"{m}-{t}" for m, t in PAIRS])
def test_kill_in_round_2_resumes_with_the_same_mask_and_weights(tmp_path, method, training):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(m=method, t=training))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    final = out / "round_2" / "checkpoint.pt"
    before = checkpoints.read_model_checkpoint(final)
    final.unlink()  # killed in round 2: rounds 0 and 1 are read back, round 2 is pruned and trained again
    torch.manual_seed(12345)  # whatever the global generator holds, the resumed run computes the same
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    after = checkpoints.read_model_checkpoint(final)
    assert before.masks.keys() == after.masks.keys()
    for k in before.masks:
        assert torch.equal(before.masks[k], after.masks[k]), f"mask {k} differs after resume"
    for k in before.state_dict:
        assert torch.equal(before.state_dict[k], after.state_dict[k]), f"weight {k} differs after resume"
    assert before.meta.metrics["verified_acc"] == after.meta.metrics["verified_acc"]
