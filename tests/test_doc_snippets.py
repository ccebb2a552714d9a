"""Every fenced ```python and ```bash/```shell block of README.md and docs/*.md runs as written.

One test per block (xdist splits them), each in its own temporary folder, offline. The rules, also in
docs/DEVELOPING.md ("Doc snippets"):

- A block runs as written unless an HTML comment on the line right above its fence says otherwise:
  ``<!-- snippet: KEY=VALUE ... -->`` (shell-quoted values; several comment lines may stack):
  - ``skip="reason"``: not run; the reason is printed and must not be empty.
  - ``setup=NAME``: a named setup of this file (``SETUPS``) first defines what the prose around the block
    defines (``student``, ``teacher``, ``blocks``, ...); ``setup=hf_salt`` imports the public API.
  - ``model=PATH=PRESET``: a zoo preset (random weights) and the shipped tokenizer saved at PATH, for
    blocks that read a model folder a previous command of the guide trains.
  - ``continues``: the previous python block of the same file runs first, in the same namespace.
  - ``fill="TEXT"``: the literal ``...`` of a fragment (``SALTConfig(..., kd_schedule="auto")``) is TEXT.
  - ``sub="OLD=>NEW"``: a smaller budget (``10_000=>5``); the test fails when OLD is not in the block.
  - ``skip_commands="PREFIX: reason"``: shell commands starting with PREFIX (``accelerate``, ``hf-salt grow``)
    are not run (reason printed).
- Shell blocks: ``#`` comments and ``\\`` continuations as in bash; ``[--flag value]`` (an optional part)
  runs with the part included. ``hf-salt CMD ...`` runs in-process with the small budget of ``BUDGET[CMD]``
  (each flag there replaces the command's value, or is added), then the block's ``budget.CMD="--flag value"``.
  Any other program must be skipped by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python": "python", "bash": "shell", "shell": "shell", "sh": "shell"}
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*snippet:(.*?)-->\s*$")

# Small budgets for `hf-salt` commands in shell blocks: each flag replaces the command's value or is added.
BUDGET: dict[str, list[str]] = {
    "pretrain": ["--max_steps", "5", "--max_train_blocks", "64", "--max_eval_blocks", "8"],
    "score": ["--max_blocks", "64"],
    "distill-step-by-step": [
        "--model",
        "t5-tiny",
        "--max_steps",
        "2",
        "--train_fraction",
        "0.005",
        "--max_eval_samples",
        "4",
        "--max_test_samples",
        "4",
    ],  # fmt: skip
    "generate-rationales": ["--max_rows", "2", "--max_new_tokens", "8"],
    "grow": [],
    "demo": ["--scale", "tiny"],
}


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    code: str
    options: dict[str, list[str]] = field(default_factory=dict)
    previous: Block | None = None  # the previous python block of the same doc

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def one(self, key: str) -> str | None:
        values = self.options.get(key)
        return values[-1] if values else None


def _parse_marker(text: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for token in shlex.split(text):
        key, _, value = token.partition("=")
        options.setdefault(key, []).append(value)
    return options


def collect() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        previous_python = None
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if not match:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            lang = LANGS.get(match.group(1))
            if lang:
                options: dict[str, list[str]] = {}
                k = i - 1
                while k >= 0 and (m := MARKER.match(lines[k])):
                    for key, values in _parse_marker(m.group(1)).items():
                        options.setdefault(key, []).extend(values)
                    k -= 1
                block = Block(
                    str(path.relative_to(ROOT)), i + 1, lang, "\n".join(lines[i + 1 : end]), options
                )
                if lang == "python":
                    block.previous, previous_python = previous_python, block
                blocks.append(block)
            i = end + 1
    return blocks


BLOCKS = collect()


# ------------------------------------------------------------------------------------------------- setups
@cache
def _tokenizer():
    from hf_salt.data import load_tokenizer

    return load_tokenizer()


@cache
def _wikitext_blocks(n: int, block_size: int):
    from hf_salt.data import load_corpus, pack_dataset

    train = load_corpus("wikitext-2")["train"]
    return pack_dataset(train.select(range(4 * n)), _tokenizer(), block_size).select(range(n))


def _save_model(path: str, preset: str) -> None:
    from hf_salt.zoo import build_model

    build_model(preset, vocab_size=len(_tokenizer()), seed=0).save_pretrained(path)
    _tokenizer().save_pretrained(path)


def _setup_hf_salt(ns: dict) -> None:
    import hf_salt

    ns.update({name: getattr(hf_salt, name) for name in hf_salt.__all__})


def _setup_salt(ns: dict) -> None:
    """`student`, `teacher` and packed WikiText-2 blocks of 64 tokens (`train`/`valid`, `*_blocks`)."""
    from hf_salt.zoo import build_model

    blocks = _wikitext_blocks(96, 64)
    vocab = len(_tokenizer())
    ns["student"] = build_model("llama-tiny-2x", vocab_size=vocab, seed=0)
    ns["teacher"] = build_model("llama-tiny", vocab_size=vocab, seed=1)
    ns["train"] = ns["train_blocks"] = blocks.select(range(80))
    ns["valid"] = ns["valid_blocks"] = blocks.select(range(80, 96))


def _setup_salt_ds(ns: dict) -> None:
    """`_setup_salt`, with `blocks`: 1,200 packed WikiText-2 blocks of 64 tokens to score and select from."""
    from hf_salt import SALTConfig

    _setup_salt(ns)
    ns["blocks"] = _wikitext_blocks(1200, 64)
    ns["args"] = SALTConfig(output_dir="salt-ds-run", max_steps=4, kd_steps=2, per_device_train_batch_size=8)


def _setup_hypercloning(ns: dict) -> None:
    """`small` (llama-tiny), `tok` and the folder `path/to/small`."""
    from hf_salt.zoo import build_model

    ns["small"] = build_model("llama-tiny", vocab_size=len(_tokenizer()), seed=0)
    ns["tok"] = _tokenizer()
    _save_model("path/to/small", "llama-tiny")


def _setup_step_by_step(ns: dict) -> None:
    """A causal `model`, its `args`, `tok` and the CQA `data`, for fragments of the step-by-step guide."""
    from hf_salt import StepByStepConfig, StepByStepTrainer, load_step_by_step
    from hf_salt.zoo import build_model

    ns["model"] = build_model("llama-tiny", vocab_size=len(_tokenizer()), seed=0)
    ns["args"] = StepByStepConfig(output_dir="sbs", max_steps=2)
    ns["tok"] = _tokenizer()
    ns["data"] = load_step_by_step("cqa")
    ns["StepByStepTrainer"] = StepByStepTrainer


def _setup_rationale_inputs(ns: dict) -> None:
    """`./my-llm` (llama-tiny), two unlabeled CQA questions and a few-shot prompt file."""
    _save_model("my-llm", "llama-tiny")
    rows = [{"input": "Where do you keep milk? Answer Choices: (a) fridge (b) oven"}] * 2
    Path("unlabeled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompt = (
        "Q: Is ice cold? Answer Choices: (a) yes (b) no\nA: Ice is frozen water. So the answer is (a).\n\n"
    )
    for name in ("cot.txt", "cot_prompt.txt"):
        Path(name).write_text(prompt)


def _setup_run_yaml(ns: dict) -> None:
    """`my_run.yaml`, the config file the step-by-step quick start reads."""
    Path("my_run.yaml").write_text("rationale_weight: 0.5\noutput_dir: out/from-config\n")


SETUPS = {
    "hf_salt": _setup_hf_salt,
    "salt": _setup_salt,
    "salt_ds": _setup_salt_ds,
    "hypercloning": _setup_hypercloning,
    "step_by_step": _setup_step_by_step,
    "rationale_inputs": _setup_rationale_inputs,
    "run_yaml": _setup_run_yaml,
}


# ----------------------------------------------------------------------------------------------- running
def _prepare(block: Block, ns: dict) -> None:
    for name in block.options.get("setup", []):
        assert name in SETUPS, f"{block.id}: unknown setup {name!r}; define it in SETUPS"
        SETUPS[name](ns)
    for spec in block.options.get("model", []):
        path, _, preset = spec.rpartition("=")
        _save_model(path, preset)


def _python_source(block: Block) -> str:
    code = block.code
    for spec in block.options.get("sub", []):
        old, sep, new = spec.partition("=>")
        assert sep and old in code, f"{block.id}: sub {spec!r} does not match the block"
        code = code.replace(old, new)
    fill = block.one("fill")
    if fill is not None:
        assert "..." in code, f"{block.id}: fill= given but the block has no `...`"
        code = code.replace("...", fill)
    return code


def _run_python(block: Block) -> None:
    chain = []
    b: Block | None = block
    while b is not None:
        chain.append(b)
        b = b.previous if "continues" in b.options else None
    ns: dict = {"__name__": "__doc_snippet__"}
    for b in reversed(chain):
        _prepare(b, ns)
        exec(compile(_python_source(b), b.id, "exec"), ns)  # noqa: S102 - the docs' own code


def _commands(block: Block) -> list[list[str]]:
    """The block's commands, one argv each (comments dropped, continuations joined, [optional] parts kept)."""
    text = block.code.replace("\\\n", " ")
    for spec in block.options.get("sub", []):
        old, sep, new = spec.partition("=>")
        assert sep and old in text, f"{block.id}: sub {spec!r} does not match the block"
        text = text.replace(old, new)
    commands = []
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        argv = [a.strip("[]") if a.startswith("[") or a.endswith("]") else a for a in argv]
        if argv:
            commands.append(argv)
    return commands


def _with_budget(argv: list[str], budget: list[str]) -> list[str]:
    argv = list(argv)
    for flag, value in zip(budget[::2], budget[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def _run_shell(block: Block) -> None:
    from hf_salt.cli.main import main

    skips = {}
    for spec in block.options.get("skip_commands", []):
        program, _, reason = spec.partition(":")
        assert reason.strip(), f"{block.id}: skip_commands={spec!r} needs 'PREFIX: reason'"
        skips[program.strip()] = reason.strip()
    _prepare(block, {})
    for argv in _commands(block):
        skipped = [reason for prefix, reason in skips.items() if shlex.join(argv).startswith(prefix)]
        if skipped:
            print(f"{block.id}: not run: {shlex.join(argv)} ({skipped[0]})")
            continue
        assert argv[0] == "hf-salt", (
            f"{block.id}: `{shlex.join(argv)}` is not an hf-salt command; skip it with "
            '<!-- snippet: skip_commands="PREFIX: reason" --> or run it here'
        )
        assert argv[1] in BUDGET, f"{block.id}: give `hf-salt {argv[1]}` a small budget in BUDGET"
        budget = BUDGET[argv[1]] + shlex.split(block.one(f"budget.{argv[1]}") or "")
        run = [argv[1], *_with_budget(argv[2:], budget)]
        print(f"{block.id}: hf-salt {shlex.join(run)}")
        try:
            rc = main(run)
        except SystemExit as exit_:  # argparse and the CLI's error path exit
            rc = exit_.code
        assert rc in (0, None), f"{block.id}: `hf-salt {shlex.join(run)}` exited with {rc}"


@contextlib.contextmanager
def _in(folder: Path):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


PATH_IN_TICKS = re.compile(r"`((?:tests|benchmarks|examples|hf_salt|docs|model_cards|shared)/[^`\s]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_cited_repository_file_exists():
    """A guide that cites `tests/x.py` or links [a](b.md) names a file of this repository (placeholders such as
    `<label>` or `*` aside)."""
    missing = []
    for path in DOCS:
        text = path.read_text()
        cited = [(m, ROOT) for m in PATH_IN_TICKS.findall(text)]
        cited += [
            (m, path.parent) for m in LINK.findall(text) if "://" not in m and not m.startswith("mailto:")
        ]
        for name, base in cited:
            name = name.rstrip(".,:;")
            if any(c in name for c in "<>{}*|") or (base / name).exists():
                continue
            missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, f"cited but not in the repository: {missing}"


KEYS = {"skip", "setup", "model", "continues", "fill", "sub", "skip_commands"}


def test_markers_are_known_and_every_skip_says_why():
    """A mistyped key (`skp=`) would silently run or skip a block; a skip without a reason hides why."""
    for block in BLOCKS:
        unknown = [k for k in block.options if k not in KEYS and not k.startswith("budget.")]
        assert not unknown, (
            f"{block.id}: unknown snippet option(s) {unknown}; known: {sorted(KEYS)}, budget.CMD"
        )
        for reason in block.options.get("skip", []):
            assert reason.strip(), f'{block.id}: a skipped block needs a reason: skip="why"'
        for name in block.options.get("setup", []):
            assert name in SETUPS, f"{block.id}: unknown setup {name!r}; define it in SETUPS"


def test_the_docs_have_runnable_blocks():
    """The collector finds the guides' blocks (a broken fence pattern would make every other test vacuous)."""
    docs = {b.doc for b in BLOCKS}
    assert {"README.md", "docs/salt.md", "docs/hypercloning.md", "docs/step_by_step.md"} <= docs
    assert sum(b.lang == "python" for b in BLOCKS) >= 10 and sum(b.lang == "shell" for b in BLOCKS) >= 10


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory) -> Path:
    """One `datasets` cache for the session: the corpus is tokenized once per worker, as on a user's machine."""
    return tmp_path_factory.mktemp("hf-datasets-cache")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs(block: Block, tmp_path, monkeypatch, datasets_cache):
    reason = block.one("skip")
    if reason is not None:
        assert reason.strip(), f'{block.id}: a skipped block needs a reason: skip="why"'
        print(f"{block.id}: not run: {reason}")
        pytest.skip(reason)
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)  # read once, at import
    monkeypatch.setattr(sys, "argv", ["doc-snippet"])
    # a snippet may register an arm, a schedule or a divergence (docs/reproduction.md does): the registries are
    # process-wide, so restore them, or later tests in this worker would see the snippet's entries
    from hf_salt.experiments.arms import ARMS
    from hf_salt.salt.divergences import DIVERGENCES
    from hf_salt.salt.schedules import SCHEDULES

    saved = [(registry, dict(registry)) for registry in (ARMS, SCHEDULES, DIVERGENCES)]
    try:
        with _in(tmp_path):
            if block.lang == "python":
                _run_python(block)
            else:
                _run_shell(block)
    finally:
        for registry, entries in saved:
            registry.clear()
            registry.update(entries)
