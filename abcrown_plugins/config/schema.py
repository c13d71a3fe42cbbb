"""Every config option of the project, declared once: section, key, kind, default, help.

``abcrown-plugins config --dump`` renders this table; the loader validates
against it; nothing else declares options. To add an option, add one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from abcrown_plugins.config.kinds import Bool, Eps, Float, Int, Kind, List, Optional, Str


@dataclass(frozen=True)
class Option:
    """One declared option."""

    key: str
    kind: Kind
    default: Any
    help: str


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    options: tuple[Option, ...]


O = Option  # short alias for the table below

SECTIONS: tuple[Section, ...] = (
    Section("general", "Run-wide settings.", (
        O("name", Str(), "run", "Experiment name; the output folder is NAME-HASH of the non-default settings."),
        O("seed", Int(), 0, "Seed for initialisation, data order and sampling."),
        O("device", Str(("auto", "cpu", "cuda")), "auto", "Torch device; auto picks cuda when available."),
        O("num_threads", Int(min=0), 0, "CPU threads for torch (0: torch's default)."),
        O("progress", Bool(), True, "Show progress bars on long loops (on stderr)."),
    )),
    Section("model", "Architecture from the model zoo (`abcrown-plugins models` lists them).", (
        O("arch", Str(), "cnn_7layer", "Zoo architecture name."),
        O("checkpoint", Optional(Str()), None, "Start from this checkpoint's weights instead of a fresh initialisation."),
    )),
    Section("data", "Data set and batching. Pixels are in [0,1]; normalisation is the model's first layer.", (
        O("dataset", Str(), "synthetic", "Data set name (synthetic, synthetic_gray, cifar10, svhn, mnist, fashion_mnist)."),
        O("root", Optional(Str()), None, "Folder holding real data set files (default: ./data)."),
        O("num_train", Optional(Int(min=1)), None, "Use this many training images (null: all)."),
        O("num_test", Optional(Int(min=1)), None, "Use this many test images (null: all)."),
        O("batch_size", Int(min=1), 128, "Training batch size."),
        O("test_batch_size", Int(min=1), 256, "Evaluation batch size."),
    )),
    Section("training", "Training of each (sub)network.", (
        O("method", Str(("standard", "ibp")), "standard", "standard: cross-entropy; ibp: IBP certified training."),
        O("epochs", Int(min=0), 10, "Number of training epochs (per pruning round)."),
        O("optimizer", Str(("adam", "sgd")), "adam", "Optimizer."),
        O("lr", Float(min=0), 1e-3, "Initial learning rate."),
        O("momentum", Float(min=0, max=1), 0.9, "SGD momentum."),
        O("weight_decay", Float(min=0), 0.0, "Weight decay."),
        O("lr_milestones", List(Int(min=0)), (), "Epochs at which the learning rate is multiplied by lr_decay."),
        O("lr_decay", Float(min=0), 0.1, "Learning-rate decay factor at each milestone."),
        O("grad_clip", Float(min=0), 8.0, "Clip the gradient norm to this (0: off)."),
        O("eps", Eps(), 2 / 255, "Target L-inf radius of certified training, in [0,1] pixel units."),
        O("eps_warmup_epochs", Int(min=0), 1, "Epochs of clean training (eps = 0) before the ramp."),
        O("eps_ramp_epochs", Int(min=0), 5, "Epochs over which eps grows from 0 to training.eps."),
        O("eps_schedule", Str(("smooth", "linear")), "smooth", "Ramp shape: smooth (exponential, then linear) or linear."),
        O("ibp_init", Bool(), True, "IBP initialisation (Shi et al. 2021) when training.method is ibp."),
        O("robust_weight", Float(min=0, max=1), 1.0, "Final weight of the IBP loss; clean loss weight is 1 - weight * eps_t / eps."),
    )),
    Section("pruning", "Iterative pruning with rewinding.", (
        O("method", Str(("magnitude",)), "magnitude", "Pruning criterion: global weight magnitude."),
        O("rounds", Int(min=0), 2, "Pruning rounds after the dense round (0: train the dense network only)."),
        O("rate", Float(min=0, max=1), 0.2, "Fraction of the remaining weights removed per round."),
        O("scope", Str(("conv", "conv+linear")), "conv", "Which layers' weights are prunable."),
        O("rewind", Str(("init", "none")), "init", "After pruning, rewind kept weights to their initial values (init) or keep training them (none)."),
    )),
    Section("verification", "Verification of each trained (sub)network.", (
        O("eps", Eps(), 2 / 255, "L-inf radius to verify, in [0,1] pixel units (e.g. 2/255)."),
        O("method", Str(("ibp", "crown")), "ibp", "Bound method: ibp (built in) or crown (needs auto_LiRPA)."),
        O("num_examples", Optional(Int(min=1)), None, "Verify the first N test images (null: the whole test split)."),
        O("batch_size", Int(min=1), 256, "Verification batch size."),
    )),
    Section("output", "Where and what to write.", (
        O("dir", Optional(Str()), None, "Output folder (default: results/NAME-HASH)."),
        O("plot", Bool(), True, "Write the verified-accuracy-vs-remaining-weights plot (PNG)."),
        O("keep_checkpoints", Bool(), True, "Keep one checkpoint per pruning round."),
    )),
)

SECTION_BY_NAME = {s.name: s for s in SECTIONS}
