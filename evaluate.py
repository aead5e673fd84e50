"""Robustness report of training checkpoints: ``python evaluate.py ckpt_path=PATH_OR_GLOB [suite=paper]``.

The installed package runs the same app as ``eroseg-eval`` (:func:`eroseg_at.cli.evaluate_app`).
"""

from eroseg_at.cli import evaluate_app

if __name__ == "__main__":
    evaluate_app()
