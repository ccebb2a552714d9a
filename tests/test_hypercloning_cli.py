"""`hf-salt grow SRC DST`: round trip through the command line."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from hf_salt import hypercloning as hc
from hf_salt.cli.main import main


@pytest.fixture(scope="module")
def src_dir(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("src") / "model"
    model.save_pretrained(path)
    return path, model


def test_grow_round_trip(src_dir, tmp_path, capsys) -> None:
    path, model = src_dir
    dst = tmp_path / "grown"
    rc = main(
        [
            "grow",
            str(path),
            str(dst),
            "--width-multiplier",
            "2",
            "--ffn-multiplier",
            "3",
            "--snr-db",
            "10",
            "--depth-multiplier",
            "2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr()
    line = [x for x in out.out.splitlines() if "verify" in x]
    assert len(line) == 1 and "OK" in line[0] and "saved to" in line[0]
    assert "HyperCloning 2x" in out.err  # the tqdm progress bar
    grown = T.AutoModelForCausalLM.from_pretrained(dst)
    assert grown.config.hidden_size == 64 and grown.config.intermediate_size == 144
    assert grown.config.num_hidden_layers == 4 and grown.config.tie_word_embeddings
    assert hc.verify(model, grown) <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grown"]  # no temporary folder left behind


def test_grow_refuses_bad_input_without_writing(src_dir, tmp_path, capsys) -> None:
    path, _ = src_dir
    dst = tmp_path / "grown"
    assert main(["grow", str(path), str(dst), "--width-multiplier", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert not dst.exists()
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["grow", str(path), str(dst)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_grow_refuses_a_non_empty_destination_before_loading(src_dir, tmp_path, capsys, monkeypatch) -> None:
    """The check comes first: a full destination costs no model loading or cloning."""
    import hf_salt.hypercloning.core as core

    monkeypatch.setattr(core, "load_source", lambda *a, **k: pytest.fail("loaded before checking the output"))
    path, _ = src_dir
    dst = tmp_path / "grown"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["grow", str(path), str(dst)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tolerance", "-1"], "tolerance must be a positive number"),
        (["--snr-db", "-30"], "snr-db"),
        (["--width-multiplier", "0"], "positive integer"),
    ],
)
def test_grow_refuses_bad_numbers(src_dir, tmp_path, capsys, flags, message, monkeypatch) -> None:
    import hf_salt.hypercloning.core as core

    monkeypatch.setattr(core, "load_source", lambda *a, **k: pytest.fail("loaded before validating"))
    path, _ = src_dir
    assert main(["grow", str(path), str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_grow_missing_source_says_no_such_folder(tmp_path, capsys) -> None:
    assert main(["grow", str(tmp_path / "missing" / "model"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such local folder" in err and "repo" not in err.lower()


@pytest.mark.parametrize(
    "name", ["./not-here", "~/not/here", "a/b/c", "C:\\models\\not-here", "models\\not-here"]
)
def test_grow_reads_a_path_with_the_library_s_one_rule(name, tmp_path, capsys, monkeypatch) -> None:
    """`hf-salt grow`, `hypercloning.from_pretrained` and the other commands share `hf_salt.checks`: a name that
    cannot be a Hub id (backslashes, a drive, several slashes) is a missing folder, refused before any loading."""
    import hf_salt.hypercloning.core as core
    from hf_salt.checks import looks_like_local_path

    monkeypatch.setattr(core.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    assert looks_like_local_path(name)
    assert main(["grow", name, str(tmp_path / "out")]) == 2
    assert f"SRC {name!r} does not exist (no such local folder" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="the source model .* does not exist"):
        hc.from_pretrained(name, 2)


def test_grow_names_the_overwrite_flag(src_dir, tmp_path, capsys) -> None:
    """A full DST is refused by the same check as every command's output folder, naming grow's own flag."""
    path, _ = src_dir
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["grow", str(path), str(tmp_path / "full")]) == 2
    assert "DST" in (err := capsys.readouterr().err) and "pass --overwrite to replace it" in err


def test_grow_checks_the_output_folder_before_any_work(src_dir, tmp_path, capsys, monkeypatch) -> None:
    import hf_salt.hypercloning.core as core

    monkeypatch.setattr(core, "load_source", lambda *a, **k: pytest.fail("loaded before checking DST"))
    path, _ = src_dir
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["grow", str(path), str(blocker / "grown")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["grow", str(path), str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not __import__("os").access(locked, __import__("os").W_OK):  # root ignores permissions
            assert main(["grow", str(path), str(locked / "grown")]) == 2
            assert "no write permission" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_grow_checks_once_and_no_verify_writes_the_same_model(src_dir, tmp_path, capsys, monkeypatch) -> None:
    """The summary's logit difference comes from the engine's traced forward: verify() is not run again."""
    import hf_salt.hypercloning as hc_pkg
    from hf_salt.hypercloning import engine

    path, model = src_dir
    monkeypatch.setattr(hc_pkg, "verify", lambda *a, **k: pytest.fail("a second verification ran"))
    forwards = []
    real = engine.Check.divergence
    monkeypatch.setattr(
        engine.Check, "divergence", lambda self, *a, **k: forwards.append(1) or real(self, *a, **k)
    )
    assert main(["grow", str(path), str(tmp_path / "checked"), "--snr-db", "10"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "verify" in x]
    assert len(line) == 1 and "OK" in line[0] and "2x8 probe" in line[0]
    assert len(forwards) == 1  # one traced forward of the noisy clone settles the layouts and checks it
    forwards.clear()
    assert main(["grow", str(path), str(tmp_path / "unchecked"), "--snr-db", "10", "--no_verify"]) == 0
    assert len(forwards) == 1  # the same forward: the layouts are chosen by it either way
    checked = T.AutoModelForCausalLM.from_pretrained(tmp_path / "checked").state_dict()
    unchecked = T.AutoModelForCausalLM.from_pretrained(tmp_path / "unchecked").state_dict()
    assert checked.keys() == unchecked.keys()
    assert all(torch.equal(checked[k], unchecked[k]) for k in checked)
    monkeypatch.undo()
    assert hc.verify(model, T.AutoModelForCausalLM.from_pretrained(tmp_path / "unchecked")) <= 1e-5


def test_no_verify_never_writes_a_wrong_clone(src_dir, tmp_path, capsys, monkeypatch) -> None:
    from hf_salt.hypercloning import engine, layout

    real = layout.grow_tensor

    def broken(src, dst_shape, choice, **kw):  # mlp.down_proj loses its division: 2x too large
        out = real(src, dst_shape, choice, **kw)
        return out * 2 if tuple(src.shape) == (32, 48) else out

    monkeypatch.setattr(engine, "grow_tensor", broken)
    path, _ = src_dir
    assert main(["grow", str(path), str(tmp_path / "grown"), "--no_verify"]) == 2
    assert "NOT the source's function" in capsys.readouterr().err
    assert not (tmp_path / "grown").exists()


def test_grow_adds_the_recipes_noise_unless_told_not_to(src_dir, tmp_path, capsys) -> None:
    """By default the clone gets 0 dB noise (its copies can separate); --no_noise gives the exact copy."""
    path, model = src_dir
    assert main(["grow", str(path), str(tmp_path / "noisy")]) == 0
    noisy = T.AutoModelForCausalLM.from_pretrained(tmp_path / "noisy")
    assert noisy.config.hypercloning["snr_db"] == 0.0
    assert hc.verify(model, noisy) <= 1e-5  # the noise keeps the function
    assert main(["grow", str(path), str(tmp_path / "exact"), "--no_noise"]) == 0
    exact = T.AutoModelForCausalLM.from_pretrained(tmp_path / "exact")
    assert exact.config.hypercloning["snr_db"] is None
    want = hc.clone(model, 2, warn_symmetry=False).state_dict()
    assert all(torch.equal(exact.state_dict()[k], want[k]) for k in want)
    q = "model.layers.0.self_attn.q_proj.weight"  # the noise moved the grown weights, the exact copy did not
    assert not torch.equal(noisy.state_dict()[q], want[q])
    assert main(["grow", str(path), str(tmp_path / "both"), "--no_noise", "--snr_db", "10"]) == 2
    assert "pass one of them" in capsys.readouterr().err and not (tmp_path / "both").exists()
