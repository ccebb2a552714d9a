"""`hf-salt demo` end to end at the tiny scale (seconds), and the experiment helpers."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_salt.cli.main import main
from hf_salt.experiments import ExperimentConfig, resolve_arms, steps_to_reach


def test_steps_to_reach_interpolates():
    steps, losses = [0, 10, 20, 30], [5.0, 4.0, 3.0, 2.5]
    assert steps_to_reach(steps, losses, 3.5) == pytest.approx(15.0)
    assert steps_to_reach(steps, losses, 3.0) == pytest.approx(20.0)
    assert steps_to_reach(steps, losses, 6.0) == 0.0
    assert steps_to_reach(steps, losses, 2.0) is None


def test_arm_resolution():
    assert resolve_arms(["salt"]) == ["baseline", "salt"]  # the baseline is always trained
    default = resolve_arms(["default"])
    assert default[:2] == ["baseline", "salt"]
    with pytest.raises(ValueError, match="Unknown arm"):
        ExperimentConfig(arms=["nope"])


def test_tiny_demo_end_to_end(tmp_path, capsys, recwarn):
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran over hills and rivers under bright morning skies".split()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 400), ("valid", 40)):
        lines = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)]
        (corpus / f"{split}.txt").write_text("\n".join(lines))
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--scale",
            "tiny",
            "--corpus",
            str(corpus),
            "--output_dir",
            str(out),
            "--arms",
            "baseline",
            "salt",
            "hypercloning",
            "hypercloning+salt",
            "salt_ds",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "reach baseline" in printed and "curves.png" in printed
    assert "train wall s" in printed and "raw wall-clock seconds" in printed  # not read as a method's speed
    # the HyperCloning arms clone with noise: the library's own "keeps the small model's capacity" warning
    assert not [w for w in recwarn if "keeps the small model's capacity" in str(w.message)]
    # the per-log dicts go to the progress bars' postfix, not to the console as lines of their own
    assert "'loss'" not in captured.out + captured.err and "'eval_loss'" not in captured.out + captured.err
    # every bar is named from the start (no stray "  0%|  | 0/8" first), and it labels what each loss is
    bars = [line for line in captured.err.replace("\r", "\n").splitlines() if "/8 [" in line]
    assert bars and not [b for b in bars if b.lstrip().startswith(("0%", "100%"))]
    assert "train_ce=" in captured.err and "val_ce=" in captured.err and "omega=" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"baseline", "salt", "hypercloning", "hypercloning+salt", "salt_ds"}
    # every hf-salt arm's model folder carries its model card
    salt_card = (out / "salt" / "README.md").read_text()
    assert "hf-salt" in salt_card and "2410.18779" in salt_card
    assert "| teacher | a local model (`teacher`) |" in salt_card  # a folder, not a Hub id
    # the quick start names the folder the model is in, which loads as printed (no made-up repo id)
    loads = re.findall(r'from_pretrained\("([^"]+)"\)', salt_card)
    assert loads and set(loads) == {str(out / "salt")}
    clone_card = (out / "hypercloning" / "README.md").read_text()
    assert "2409.12903" in clone_card and "hypercloning" in clone_card.lower()
    assert "| grown from | a local model (`teacher`) |" in clone_card  # the demo's teacher folder
    ds_card = (out / "salt_ds" / "README.md").read_text()
    assert "| top-k | 10 |" in ds_card and "| score statistic | median |" in ds_card
    for card in (salt_card, clone_card, ds_card, (out / "hypercloning_plus_salt" / "README.md").read_text()):
        assert "not recorded" not in card
    salt = results["arms"]["salt"]
    assert salt["steps"] == 8 and salt["kd_steps"] == 2
    assert salt["curve"]["kd_weight"][0] == pytest.approx(0.75) and salt["curve"]["kd_weight"][-1] == 0.0
    assert len(salt["curve"]["eval_loss"]) == 3  # step 0, 4, 8
    assert 0.0 < results["arms"]["baseline"]["steps_to_baseline_fraction"] <= 1.0
    assert (out / "curves.png").stat().st_size > 1000
    model = AutoModelForCausalLM.from_pretrained(out / "salt")
    assert torch.isfinite(next(model.parameters())).all()
    assert (out / "teacher" / "config.json").exists()


def test_plot_colours_each_arm_the_same_in_both_panels(tmp_path, monkeypatch):
    import matplotlib.figure

    from hf_salt.experiments import plot_curves

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    curve = {"steps": [0, 4], "eval_loss": [9.0, 8.0], "kd_steps": [], "kd_weight": []}
    kd_curve = {**curve, "kd_steps": [1, 2], "kd_weight": [0.75, 0.0]}
    results = {
        "teacher": {"final_eval_loss": 8.5, "preset": "t"},
        "arms": {
            "baseline": {"final_eval_loss": 8.0, "curve": curve},
            "salt": {"final_eval_loss": 7.9, "curve": kd_curve},
        },
    }
    plot_curves(results, tmp_path / "p.png")
    top, bottom = figures[0].axes
    colour = {line.get_label(): line.get_color() for line in top.lines}
    assert colour["salt"] != colour["baseline"]
    assert {line.get_label(): line.get_color() for line in bottom.lines} == {"salt": colour["salt"]}
