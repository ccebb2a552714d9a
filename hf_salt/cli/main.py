"""`hf-salt` entry point: dispatches to one module per subcommand.

Each subcommand module defines `COMMAND: Command` (see `hf_salt.cli.parser`). Modules are imported
only when their command runs, so `hf-salt --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from hf_salt import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "hf_salt.cli.demo",
        "Main job: teacher, baseline, SALT (and friends) on the embedded WikiText-2.",
    ),
    "pretrain": (
        "hf_salt.cli.pretrain",
        "Pre-train one causal LM (zoo preset or local folder) with plain Trainer or SALT.",
    ),
    "grow": (
        "hf_salt.cli.grow",
        "Grow a trained causal LM into a wider one with HyperCloning (function-preserving).",
    ),
    "score": ("hf_salt.cli.score", "SALT_DS: score a corpus with a small model and save the scored dataset."),
    "distill-step-by-step": (
        "hf_salt.cli.step_by_step",
        "Distilling step-by-step: train a small task model on labels and LLM rationales.",
    ),
    "generate-rationales": (
        "hf_salt.cli.rationales",
        "Generate chain-of-thought rationales and labels with a local causal LM.",
    ),
    "benchmark": (
        "hf_salt.cli.benchmark",
        "Reproduction benchmark: every arm, several seeds, tables and plots.",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        f"hf-salt {__version__}: small models that make language-model training cheaper.",
        "",
        "usage: hf-salt <command> [options]   (hf-salt <command> --help for a command's options)",
        "       every command also reads a YAML/JSON config: hf-salt <command> --config cfg.yaml",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hf-salt: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        result = module.COMMAND.main(rest, prog=f"hf-salt {name}")
    except KeyboardInterrupt:  # Ctrl-C before the command started (imports, parsing): nothing was written
        print(f"hf-salt {name}: interrupted before any work; nothing was written.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
