"""Where `minilora train` writes, decided and checked before the model loads (`minilora.train.runs` says why).

- No ``--output_dir``: a new ``outputs/run-<date>-<time>`` per run, so the plain ``minilora train`` can be repeated;
  with ``--resume_from_checkpoint latest`` the newest run there that has a checkpoint, with a checkpoint path its
  directory.
- No ``--save_path``: ``<output_dir>/model``, so a saved model sits beside the run that made it.
- A used ``--output_dir`` is refused unless resuming or ``--overwrite_output_dir``; a ``--save_path`` that is (or
  contains) the model being fine-tuned is refused always, a non-empty one unless ``--overwrite_output_dir``, and
  so is a ``--save_path`` that would replace the run's own directory. Each refusal is a `UsageError` (exit 2).
"""
from __future__ import annotations

import os

from .arguments import UsageError

RUNS_ROOT = "outputs"
FLAG = "--overwrite_output_dir"


def resolve(args) -> None:
    """Fill in ``args.output_dir`` and ``args.save_path`` when they were left out (nothing is created yet)."""
    from ..train.runs import latest_run_dir
    resume = args.resume_from_checkpoint
    if args.output_dir is None and resume:
        if resume == "latest":
            args.output_dir = latest_run_dir(RUNS_ROOT)
            if args.output_dir is None:
                raise UsageError(f"--resume_from_checkpoint latest: no run under {RUNS_ROOT}/ has a checkpoint "
                                 "(runs write them with --save_steps N); pass --output_dir of the run to resume")
            print(f"resuming the newest run with a checkpoint: {args.output_dir}")
        else:
            args.output_dir = os.path.dirname(os.path.abspath(resume))
    args.default_save_path = args.save_path is None
    if args.save_path is None:
        args.save_path = os.path.join(args.output_dir or "<new run directory>", "model")


def check(args) -> None:
    """Refuse, before loading anything, paths that would mix runs or destroy data; then claim the run directory."""
    from ..io.atomic import SaveTargetError, check_save_target
    from ..train.runs import check_output_dir, new_run_dir
    if args.output_dir is not None:
        try:
            check_output_dir(args.output_dir, resuming=bool(args.resume_from_checkpoint),
                             overwrite=args.overwrite_output_dir, flag=FLAG)
        except (FileExistsError, NotADirectoryError) as e:
            raise UsageError(f"--output_dir: {e}") from None
    if args.save_model or args.save_gguf:
        save = os.path.realpath(args.save_path) if args.output_dir else None
        if save and (save == os.path.realpath(args.output_dir)
                     or os.path.realpath(args.output_dir).startswith(save + os.sep)):
            raise UsageError(f"--save_path {args.save_path!r} would replace the run directory {args.output_dir!r} "
                             "(its logs and checkpoints); save to a sub-directory of it or elsewhere")
        model = [os.path.abspath(args.model_name)] if os.path.exists(args.model_name) else []
        if args.output_dir is not None or not args.default_save_path:  # a new run directory is empty
            try:
                check_save_target(args.save_path, model, overwrite=args.overwrite_output_dir, flag=FLAG)
            except (SaveTargetError, FileExistsError, NotADirectoryError) as e:
                raise UsageError(f"--save_path: {e}") from None
    if args.output_dir is None:
        args.output_dir = new_run_dir(RUNS_ROOT)
        if args.default_save_path:
            args.save_path = os.path.join(args.output_dir, "model")
        print(f"this run's directory: {args.output_dir}")
