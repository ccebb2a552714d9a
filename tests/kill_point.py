"""Run `hf-salt ARGS` and stop at a chosen point, so the test can SIGKILL it there.

Usage: python tests/kill_point.py POINT -- hf-salt-args...   (POINT: step:N, save:N, model, grow, score)

At the point it prints `KILL-POINT <what>` and sleeps: the test kills the process from outside, exactly as a
user's Ctrl-\\, an OOM killer or a pre-empted machine would (no `finally`, no atexit). The points:
- `step:N[:K]`: after optimizer step N (between checkpoints) of the K-th training run (default 1st: the
  demo trains a teacher, then one run per arm);
- `save:N`: inside the checkpoint save of step N, after the weights and optimizer are written and before
  the RNG states and `trainer_state.json`;
- `grow`/`score`: inside the final output save, after the first files are written to the temporary folder;
- `model`: inside the final `model/` save of `pretrain`/`distill-step-by-step`, after the weights are written
  to the temporary folder.
"""

from __future__ import annotations

import sys
import time


def _stop(what: str) -> None:
    print(f"KILL-POINT {what}", flush=True)
    while True:
        time.sleep(60)


def _install(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "step":
        from transformers.trainer_callback import CallbackHandler

        step, _, nth = arg.partition(":")
        seen = [0]
        original_step_end = CallbackHandler.on_step_end

        def on_step_end(self, args, state, control):
            if state.global_step == int(step):
                seen[0] += 1
                if seen[0] == int(nth or 1):
                    _stop(point)
            return original_step_end(self, args, state, control)

        CallbackHandler.on_step_end = on_step_end
    elif kind == "save":
        from transformers import Trainer

        original_rng = Trainer._save_rng_state

        def save_rng_state(self, output_dir):
            if self.state.global_step == int(arg):
                _stop(point)
            return original_rng(self, output_dir)

        Trainer._save_rng_state = save_rng_state
    elif kind == "model":
        from pathlib import Path

        from transformers import PreTrainedModel

        original_save = PreTrainedModel.save_pretrained

        def save_final(self, path, *args, **kwargs):
            result = original_save(self, path, *args, **kwargs)
            if Path(path).name.startswith(".model.tmp-"):  # not a checkpoint-N save
                _stop(f"{point} {path}")
            return result

        PreTrainedModel.save_pretrained = save_final
    elif kind in ("grow", "score"):
        if kind == "grow":
            from transformers import PreTrainedModel as cls

            name = "save_pretrained"
        else:
            from datasets import Dataset as cls

            name = "save_to_disk"
        original_save = getattr(cls, name)

        def save(self, path, *args, **kwargs):
            result = original_save(self, path, *args, **kwargs)
            _stop(f"{point} {path}")
            return result

        setattr(cls, name, save)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: kill_point.py POINT -- hf-salt-args..."
    _install(point)
    from hf_salt.cli.main import main

    sys.exit(main(rest))
