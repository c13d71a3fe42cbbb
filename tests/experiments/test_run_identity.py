"""A resumed run is the same run or it is refused; a failed run claims nothing; one run per folder at a time."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from abcrown_plugins import checkpoints
from abcrown_plugins.cli import main
from abcrown_plugins.config import load_config
from abcrown_plugins.errors import UserError
from abcrown_plugins.experiments import claim_run_dir
from abcrown_plugins.models import model_for, model_meta


def save_net(path, seed, arch="cnn_small", dataset="synthetic"):
    from abcrown_plugins.data import load_dataset

    info = load_dataset(dataset, "test", num=16).info
    torch.manual_seed(seed)
    model = model_for(arch, info).eval()
    checkpoints.save_model_checkpoint(path, model.state_dict(), model_meta(arch, info))
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


CERTIFY = ["--general.progress", "false", "--data.num_test", "32", "--smoothing.n0", "4", "--smoothing.n", "32",
           "--smoothing.num_examples", "2", "--smoothing.batch_size", "16", "--smoothing.radii", "[0]"]


def certify(ckpt, out, *extra):
    return main(["certify", "--checkpoint", str(ckpt), "--output", str(out), *CERTIFY, *extra])


def test_certify_resume_with_another_checkpoint_content_is_refused(tmp_path, capsys):
    ckpt = save_net(tmp_path / "net.pt", seed=0)
    out = tmp_path / "out"
    assert certify(ckpt, out) == 0
    recorded = json.loads((out / "run.json").read_text())["identity"]
    assert recorded["checkpoint"] == "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()
    save_net(ckpt, seed=1)  # retrained in place: same path, other weights
    capsys.readouterr()
    assert certify(ckpt, out, "--smoothing.num_examples", "4") == 2
    err = one_line(capsys)
    assert "checkpoint: sha256:" in err and "start afresh" in err and str(out) in err
    assert len((out / "certify.tsv").read_text().splitlines()) == 4  # the two old rows, nothing mixed in


def test_certify_resume_from_a_moved_checkpoint_is_the_same_run(tmp_path, capsys):
    ckpt = save_net(tmp_path / "net.pt", seed=0)
    out = tmp_path / "out"
    assert certify(ckpt, out) == 0
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.move(ckpt, moved)
    assert certify(moved, out, "--smoothing.num_examples", "3") == 0  # the content, not the path, is the run
    assert len((out / "certify.tsv").read_text().splitlines()) == 5


def test_certify_resume_with_another_batch_size_continues_with_the_same_rows(tmp_path):
    """The noise stream does not depend on the batch size, so neither do the rows: not part of the identity."""
    ckpt = save_net(tmp_path / "net.pt", seed=0)
    assert certify(ckpt, tmp_path / "a") == 0
    assert certify(ckpt, tmp_path / "a", "--smoothing.batch_size", "5", "--smoothing.num_examples", "3") == 0
    assert certify(ckpt, tmp_path / "b", "--smoothing.num_examples", "3") == 0
    rows = [(tmp_path / d / "certify.tsv").read_text().splitlines() for d in ("a", "b")]
    strip = lambda lines: [line.rsplit("\t", 1)[0] for line in lines]  # noqa: E731  (last column: time)
    assert len(rows[0]) == 5 and strip(rows[0]) == strip(rows[1])


@pytest.mark.parametrize("change,key", [
    (["--smoothing.split", "train"], "smoothing.split"),
    (["--data.num_test", "16"], "data.num_test"),
    (["--general.seed", "3"], "general.seed"),
])
def test_certify_resume_with_a_setting_that_changes_rows_is_refused(tmp_path, capsys, change, key):
    ckpt = save_net(tmp_path / "net.pt", seed=0)
    out = tmp_path / "out"
    assert certify(ckpt, out) == 0
    capsys.readouterr()
    assert certify(ckpt, out, *change) == 2
    err = one_line(capsys)
    assert key in err and "start afresh" in err


PRUNE = """
general: {{name: ident, progress: false}}
model: {{arch: {arch}, checkpoint: {ckpt}}}
data: {{dataset: synthetic, num_train: 32, num_test: 8, batch_size: 32}}
training: {{method: standard, epochs: 1}}
pruning: {{method: imp, rounds: 0}}
verification: {{pgd_steps: 0}}
"""


def test_pruning_resume_with_a_changed_start_checkpoint_is_refused(tmp_path, capsys):
    ckpt = save_net(tmp_path / "start.pt", seed=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(PRUNE.format(arch="cnn_small", ckpt=ckpt))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out)]) == 0
    (out / "round_0" / "checkpoint.pt").unlink()  # killed in round 0
    save_net(ckpt, seed=1)
    capsys.readouterr()
    assert main(["run", str(cfg), "--output", str(out)]) == 2
    assert "model.checkpoint: sha256:" in one_line(capsys)
    moved = save_net(tmp_path / "moved.pt", seed=0)  # the original content at another path: the same run
    cfg.write_text(PRUNE.format(arch="cnn_small", ckpt=moved))
    assert main(["run", str(cfg), "--output", str(out)]) == 0


def test_a_run_that_fails_its_checks_claims_no_folder(tmp_path, capsys):
    ckpt = save_net(tmp_path / "start.pt", seed=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(PRUNE.format(arch="cnn_7layer", ckpt=ckpt))  # cnn_small weights do not fit cnn_7layer
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out)]) == 2
    assert "does not fit" in one_line(capsys)
    assert not out.exists()
    cfg.write_text(PRUNE.format(arch="cnn_small", ckpt=ckpt))  # fixed
    assert main(["run", str(cfg), "--output", str(out)]) == 0


def test_a_failure_right_after_the_claim_undoes_it(tmp_path):
    cfg = load_config(None)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with claim_run_dir(out, cfg, "pruning"):
            raise RuntimeError("the run's first step failed")
    assert not out.exists()
    with claim_run_dir(out, cfg, "pruning"):
        (out / "result.txt").write_text("1")
    with pytest.raises(RuntimeError), claim_run_dir(out, cfg, "pruning"):
        raise RuntimeError("a resumed run failed")
    assert (out / "run.json").is_file() and (out / "result.txt").is_file()  # a run with results stays claimed


def test_two_runs_cannot_work_in_one_folder(tmp_path, capsys):
    cfg = load_config(None, [("training.epochs", 1)])
    out = tmp_path / "run"
    with claim_run_dir(out, cfg, "pruning"):
        with pytest.raises(UserError, match="in use by another run"):
            claim_run_dir(out, cfg, "pruning")
        yaml = tmp_path / "c.yaml"
        yaml.write_text("training: {epochs: 1}\ngeneral: {progress: false}\n")
        assert main(["run", str(yaml), "--output", str(out)]) == 2
        err = one_line(capsys)
        assert "in use" in err and "process" in err
    claim_run_dir(out, cfg, "pruning").release()  # released when the first run ended


def test_claim_names_the_settings_that_differ_and_cleans_stale_temporaries(tmp_path):
    cfg = load_config(None, [("training.epochs", 3)])
    out = tmp_path / "run"
    with claim_run_dir(out, cfg, "pruning"):
        pass
    (out / ".summary.csv.abc123.tmp").write_text("half")  # left by a killed writer
    (out / "round_0").mkdir()
    (out / "round_0" / ".checkpoint.pt.x.tmp").write_bytes(b"half")
    with claim_run_dir(out, cfg, "pruning"):
        assert not list(out.rglob(".*.tmp"))
    with pytest.raises(UserError) as e:
        claim_run_dir(out, cfg.replace(training={"epochs": 4, "lr": 0.5}), "pruning")
    assert "training.epochs: 3 before, 4 now" in str(e.value) and "training.lr: default before, 0.5 now" in str(e.value)


@pytest.mark.parametrize("problem", ["is a file", "parent is a file", "read-only", "disk full"])
def test_output_folder_problems_are_one_line(tmp_path, capsys, monkeypatch, problem):
    import errno
    import os

    from abcrown_plugins import fileio

    yaml = tmp_path / "c.yaml"
    yaml.write_text("general: {progress: false}\ndata: {num_train: 32, num_test: 8, batch_size: 32}\n"
                    "training: {method: standard, epochs: 1}\npruning: {rounds: 0}\nverification: {pgd_steps: 0}\n")
    out = tmp_path / "out"
    if problem == "is a file":
        out.write_text("x")
    elif problem == "parent is a file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    elif problem == "read-only":
        real_mkdir = os.mkdir

        def refuse(path, *a, **k):
            if str(path).startswith(str(out)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", refuse)
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(fileio.os, "fsync", full)
    assert main(["run", str(yaml), "--output", str(out)]) == 2
    err = one_line(capsys)
    assert str(out) in err or "disk is full" in err
    if problem == "disk full":
        assert "disk is full" in err
        assert not [p for p in tmp_path.rglob(".*.tmp")]  # nothing half-written


TRANSFER = """
general: {{name: ident-transfer, progress: false}}
model: {{arch: cnn_small, checkpoint: {ckpt}}}
data: {{dataset: synthetic, num_train: 32, num_test: 8, batch_size: 32}}
transfer: {{tasks: [position], patterns: [], baselines: [dense], epochs: 1, certify: false}}
"""


def test_transfer_resume_with_a_changed_base_checkpoint_is_refused(tmp_path, capsys):
    ckpt = save_net(tmp_path / "base.pt", seed=0)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRANSFER.format(ckpt=ckpt))
    out = tmp_path / "out"
    assert main(["transfer", str(cfg), "--output", str(out)]) == 0
    (out / "position" / "dense" / "checkpoint.pt").unlink()  # killed while fine-tuning
    save_net(ckpt, seed=1)  # the base file changed meanwhile
    capsys.readouterr()
    assert main(["transfer", str(cfg), "--output", str(out)]) == 2
    assert "model.checkpoint: sha256:" in one_line(capsys)
    save_net(ckpt, seed=0)  # the same base again: the run resumes
    assert main(["transfer", str(cfg), "--output", str(out)]) == 0


def test_a_folder_of_an_older_version_is_resumed_when_its_config_hash_matches(tmp_path):
    cfg = load_config(None, [("training.epochs", 3)])
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config_hash": cfg.hash(), "name": "x", "kind": "pruning"}))
    with pytest.raises(UserError, match="config hash"):
        claim_run_dir(out, cfg.replace(training={"epochs": 4}), "pruning")
    claim_run_dir(out, cfg, "pruning").release()
    assert json.loads((out / "run.json").read_text())["identity"] == {"training.epochs": 3}  # recorded from now on
