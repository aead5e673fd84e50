"""Robustness report of training checkpoints: ``python evaluate.py ckpt_path=PATH_OR_GLOB [suite=paper]``."""

import hydra
from omegaconf import DictConfig

from eroseg_at.evaluation import evaluate


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
